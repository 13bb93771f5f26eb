// Command etcd is etcd's server built from the official go.etcd.io/etcd/server/v3 module.
// etcd's root module (go.etcd.io/etcd/v3, which holds the usual main package) has replace directives,
// so it cannot be 'go install'ed; this module calls the same entry point instead.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
