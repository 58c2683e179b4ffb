# freeflow/ffrouter: the router image of k8s/ffrouter.yaml and of the Docker
# demo and tests (scripts/docker.sh images builds it; BASE is the local
# freeflow/base:<hash> tag). Run it as k8s/ffrouter.yaml does: no
# capabilities, read-only root, socket directories on a host volume
# (scripts/docker.sh prints the flags: `scripts/docker.sh flags`).
ARG BASE
FROM ${BASE}
COPY ffrouter /usr/local/bin/ffrouter
ENTRYPOINT []
CMD ["ffrouter", "--help"]
