/* Public UCX 1.13 headers the ff transport is generated from (bindgen). The
 * internal structs it also needs are re-declared in src/internal.rs. */
#include <uct/api/uct.h>
#include <uct/api/version.h>
#include <ucs/config/parser.h>
#include <ucs/config/global_opts.h>
#include <ucs/type/class.h>
#include <ucs/debug/log_def.h>
#include <ucs/async/async_fwd.h>
#include <ucp/api/ucp.h>
#include <ucs/memory/rcache.h>
#include <ucm/api/ucm.h>
