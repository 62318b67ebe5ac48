// Command gen writes the network-policy-api conformance suite's manifests (the base/ tree embedded in module
// sigs.k8s.io/network-policy-api) into DIR/base, with every container that serves SCTP taken out of the base
// pods: on a kernel without SCTP those containers exit at once ("Failed to listen SCTP"), so the suite's
// setup would never see its pods Ready and no test would run. Nothing else changes; the tests' own SCTP
// probes then fail, and the runner reports them as needing SCTP. It fails if the upstream file no longer has
// the shape this expects (no container dropped, or SCTP left), so a new release is looked at, not trusted.
//
// Usage: go run ./withoutsctp/gen DIR
package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/network-policy-api/conformance"
)

func indent(l string) int { return len(l) - len(strings.TrimLeft(l, " ")) }

// withoutSCTP drops the items of every `containers:` list that run agnhost's porter (the suite's SCTP
// servers); it returns the text and how many it dropped.
func withoutSCTP(text string) (string, int) {
	lines := strings.Split(text, "\n")
	var out []string
	dropped := 0
	for i := 0; i < len(lines); {
		out = append(out, lines[i])
		if strings.TrimSpace(lines[i]) != "containers:" {
			i++
			continue
		}
		i++
		if i == len(lines) {
			break
		}
		item := indent(lines[i])
		for i < len(lines) && indent(lines[i]) == item && strings.HasPrefix(strings.TrimSpace(lines[i]), "- ") {
			j := i + 1
			for j < len(lines) && indent(lines[j]) > item && strings.TrimSpace(lines[j]) != "" {
				j++
			}
			if strings.Contains(strings.Join(lines[i:j], "\n"), "agnhost porter") {
				dropped++
			} else {
				out = append(out, lines[i:j]...)
			}
			i = j
		}
	}
	return strings.Join(out, "\n"), dropped
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gen DIR")
		os.Exit(2)
	}
	dir := os.Args[1]
	err := fs.WalkDir(conformance.Manifests, "base", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := conformance.Manifests.ReadFile(path)
		if err != nil {
			return err
		}
		text := string(data)
		if path == "base/manifests.yaml" {
			var dropped int
			text, dropped = withoutSCTP(text)
			if dropped == 0 || strings.Contains(strings.ToUpper(text), "SCTP") {
				return fmt.Errorf("%s: %d SCTP containers dropped, SCTP left: %v (the upstream file changed shape)",
					path, dropped, strings.Contains(strings.ToUpper(text), "SCTP"))
			}
			fmt.Printf("%s: %d SCTP server containers taken out of the base pods\n", path, dropped)
		}
		out := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		return os.WriteFile(out, []byte(text), 0o644)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
