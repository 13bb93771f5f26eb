//go:build tools

// Package tools pins the OCI distribution-spec conformance suite; hack/build compiles its tests with
// 'go test -c' into a standalone conformance.test binary.
package tools

import (
	_ "github.com/opencontainers/distribution-spec/conformance"
)
