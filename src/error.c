/* Error codes and the version: both driven by the header's one list. */
#include "mproc.h"

#include <string.h>

const char *mp_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
#define XX(name, value, msg) \
    case MP_##name:          \
        return msg;
        MP_ERRNO_MAP(XX)
#undef XX
    }
    if (code < 0 && code > -4096) {
        const char *s = strerrordesc_np(-code); /* static, thread-safe */
        if (s)
            return s;
    }
    return "unknown error";
}

const char *mp_err_name(int code)
{
    switch (code) {
    case 0:
        return "0";
#define XX(name, value, msg) \
    case MP_##name:          \
        return "MP_" #name;
        MP_ERRNO_MAP(XX)
#undef XX
    }
    if (code < 0 && code > -4096) {
        const char *s = strerrorname_np(-code);
        if (s)
            return s;
    }
    return "unknown";
}

const char *mp_version_string(void) { return MP_VERSION_STRING; }
