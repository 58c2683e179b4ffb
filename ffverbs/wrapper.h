/* The libibverbs ABI ffverbs implements (bindgen): Debian 12's rdma-core 44 headers. */
#include <infiniband/verbs.h>
