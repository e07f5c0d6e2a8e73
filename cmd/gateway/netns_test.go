package main

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// testBinEnv names the built gateway for a re-run of this test binary, and
// netnsEnv marks a run inside a network namespace of its own.
const (
	testBinEnv = "GATEWAY_TEST_BIN"
	netnsEnv   = "GATEWAY_TEST_NETNS"
)

// inNetns runs the calling test again, alone, in a new network namespace
// (unshare --net) and reports its result; it returns true in that re-run,
// where the test goes on. A namespace of its own gives the test a loopback
// nobody else uses and netfilter rules that vanish with the process: there
// is nothing to clean up, even after a crash. Without root, or where the
// kernel refuses a namespace, the test is skipped (and fails in CI, where
// .ci/run runs as root and installs what it needs).
func inNetns(t *testing.T, tools ...string) bool {
	t.Helper()
	if os.Getenv(netnsEnv) == "1" {
		if err := exec.Command("ip", "link", "set", "lo", "up").Run(); err != nil {
			t.Fatalf("ip link set lo up: %v", err)
		}
		return true
	}
	skip := t.Skipf
	if os.Getenv("CI") == "true" {
		skip = t.Fatalf
	}
	if os.Geteuid() != 0 {
		skip("needs root for a network namespace and netfilter rules (run the tests as root, as .ci/run does)")
		return false
	}
	for _, tool := range append([]string{"unshare", "ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			skip("needs %s (apt-get install %s; .ci/run installs it)", tool, debianPackage(tool))
			return false
		}
	}
	if out, err := exec.Command("unshare", "--net", "true").CombinedOutput(); err != nil {
		skip("the kernel refuses a network namespace here: %v %s", err, out)
		return false
	}
	cmd := exec.Command("unshare", "--net", "--", os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), netnsEnv+"=1", testBinEnv+"="+gatewayBin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	t.Logf("in a network namespace:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("%s in a network namespace failed: %v", t.Name(), err)
	}
	return false
}

func debianPackage(tool string) string {
	switch tool {
	case "unshare":
		return "util-linux"
	case "ip":
		return "iproute2"
	case "nft":
		return "nftables"
	}
	return tool
}
