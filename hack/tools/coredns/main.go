// Command coredns is CoreDNS built as a library with only the plugins the real node's Corefile uses
// (hack/localcluster/node.py writes it: bind, ready, errors, kubernetes, cache), the way CoreDNS documents
// for external builds. `go install github.com/coredns/coredns` compiles every plugin, the cloud SDKs of
// route53, azure, clouddns and etcd among them, which made it the slowest build of the real node.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

// directives keeps CoreDNS's own order (core/dnsserver/zdirectives.go): a plugin sees every request after the
// plugins listed before it. A Corefile naming any other plugin is refused at start.
var directives = []string{
	"bind",
	"ready",
	"errors",
	"cache",
	"kubernetes",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
