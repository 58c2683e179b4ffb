/* The librdmacm ABI ffrdmacm implements (bindgen): Debian 12's rdma-core 44 headers. */
#include <rdma/rdma_cma.h>
