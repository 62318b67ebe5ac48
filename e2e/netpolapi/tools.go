//go:build tools

// This file is never compiled (the tools build tag); it keeps the suite's module and the imports of its test
// files in go.mod, which `go test -c sigs.k8s.io/network-policy-api/conformance` builds from.
package netpolapi

import (
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	_ "sigs.k8s.io/controller-runtime/pkg/client/config"
	_ "sigs.k8s.io/network-policy-api/conformance/tests"
	_ "sigs.k8s.io/network-policy-api/conformance/utils/flags"
	_ "sigs.k8s.io/network-policy-api/conformance/utils/suite"
)
