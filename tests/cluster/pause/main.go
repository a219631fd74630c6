// Command pause is the sandbox container of the test node's pods (containerd's sandbox_image; see
// tests/cluster/node.py). It only has to exist while the pod does: it holds the pod's namespaces, reaps
// children re-parented to it (it is PID 1 when a pod shares its process namespace) and exits 0 when
// the runtime stops the sandbox with SIGTERM or SIGINT.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// One SIGCHLD can stand for several exits: collect every child that has finished.
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
