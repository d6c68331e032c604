//go:build tools

// Package tools pins SeaweedFS's `weed` command, the chart's embedded S3 server.
package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
