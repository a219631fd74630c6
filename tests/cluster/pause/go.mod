// The test node's pause (sandbox) program: standard library only. Built by tests/cluster/build.sh.
module cai-operator/tests/cluster/pause

go 1.24.0
