// Command coredns is CoreDNS with only the plugins the local real node's
// cluster DNS uses: Service and Pod names from the API server, nothing else.
// Importing github.com/coredns/coredns/core/plugin would pull every plugin's
// dependencies (cloud DNS providers among them), most of which the module
// proxy here does not serve.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	// Directives fixes the order plugins run in; keep the upstream order of these.
	dnsserver.Directives = []string{
		"bind", "errors", "health", "ready", "cache", "loadbalance", "kubernetes",
	}
	coremain.Run()
}
