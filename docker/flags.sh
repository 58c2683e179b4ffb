# The images and `docker run` flags of FreeFlow's containers: sourced by
# scripts/docker.sh, scripts/demo.sh and the Docker tests, and read by
# python/tests/test_k8s.py, which checks that k8s/ffrouter.yaml and
# k8s/training-job.yaml ask Kubernetes for the same (keep it KEY="value"
# lines, one per line).

# The router image (k8s/ffrouter.yaml's DaemonSet) and the image training
# images are built FROM (docker/rank.Dockerfile).
FF_ROUTER_IMAGE="freeflow/ffrouter:0.1.0"
FF_RANK_IMAGE="freeflow/rank:0.1.0"

# The router: uid 0 only to write the socket directories (created
# root-owned on the host), no capability, read-only root, no privilege
# gain. Per tenant T it gets `-v HOSTDIR/T:/run/freeflow/T` and
# `--tenant T=/run/freeflow/T/ffrouter.sock`.
FF_ROUTER_RUN_FLAGS="--user 0:0 --cap-drop ALL --read-only --security-opt no-new-privileges"
FF_ROUTER_SOCKET_ROOT="/run/freeflow"

# A training container: nobody, no capability, its own IPC namespace,
# only its tenant's socket directory, read-only, at /run/freeflow.
FF_RANK_RUN_FLAGS="--user 65534:65534 --cap-drop ALL --ipc private --security-opt no-new-privileges"
FF_RANK_SOCKET_DIR="/run/freeflow"
FF_RANK_SOCKET_MOUNT_OPTS="ro"
