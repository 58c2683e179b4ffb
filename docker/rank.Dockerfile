# freeflow/rank: what a training container needs to use FreeFlow: the
# plugins in /usr/local/lib/freeflow (libuct_ff.so for UCX/Open MPI,
# libnccl-net-ff.so for NCCL), the verbs and rdma_cm libraries in
# /usr/local/lib/freeflow/verbs (ffverbs and ffrdmacm: verbs programs run
# with LD_LIBRARY_PATH naming it), the freeflow Python package, ffbench, and
# (from the base) UCX 1.13, Open MPI and Python. Build training images
# FROM it. BASE is the local freeflow/base:<hash> tag.
ARG BASE
FROM ${BASE}
COPY ffbench /usr/local/bin/ffbench
COPY libuct_ff.so libnccl-net-ff.so /usr/local/lib/freeflow/
COPY libibverbs.so.1 librdmacm.so.1 /usr/local/lib/freeflow/verbs/
COPY freeflow /usr/lib/python3/dist-packages/freeflow
# mpirun passes its rsh agent to every orted, which checks that it exists
# (mpirun --mca plm_rsh_agent ffrsh, with tools/ on the launcher's PATH)
COPY ffrsh /usr/local/bin/ffrsh
ENV FF_ROUTER_SOCKET=/run/freeflow/ffrouter.sock
USER 65534:65534
CMD ["python3", "-m", "freeflow", "doctor"]
