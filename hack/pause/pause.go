// The sandbox process of the real test node's pause image (tests/helpers/node.py):
// the first process of every Pod, which holds the Pod's namespaces while its
// containers come and go. The usual image cannot be pulled without a registry, so
// hack/testbins.sh builds this one statically and hack/images.sh puts it in an image.
// It waits for SIGTERM or SIGINT and, as PID 1 of a shared process namespace,
// reaps the children orphaned to it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
