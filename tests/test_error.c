#include "harness.h"

#include <errno.h>

static const int codes[] = {
#define XX(name, value, msg) MP_##name,
    MP_ERRNO_MAP(XX)
#undef XX
};
static const char *const names[] = {
#define XX(name, value, msg) "MP_" #name,
    MP_ERRNO_MAP(XX)
#undef XX
};
#define NCODES (sizeof codes / sizeof codes[0])

TEST(every_code_has_a_message_and_a_name)
{
    for (size_t i = 0; i < NCODES; i++) {
        ASSERT_LT(codes[i], 0);
        const char *m = mp_strerror(codes[i]);
        ASSERT_TRUE(m && m[0]);
        ASSERT_TRUE(strcmp(m, "unknown error") != 0);
        ASSERT_STR_EQ(mp_err_name(codes[i]), names[i]);
    }
}

TEST(codes_are_distinct)
{
    for (size_t i = 0; i < NCODES; i++)
        for (size_t j = i + 1; j < NCODES; j++) {
            ASSERT_NE(codes[i], codes[j]);
            ASSERT_TRUE(strcmp(mp_strerror(codes[i]), mp_strerror(codes[j])) != 0);
        }
}

TEST(errno_mirrors)
{
    ASSERT_EQ(MP_EINVAL, -EINVAL);
    ASSERT_EQ(MP_ENOMEM, -ENOMEM);
    ASSERT_EQ(MP_ETIMEDOUT, -ETIMEDOUT);
    ASSERT_EQ(MP_EPERM, -EPERM);
    ASSERT_EQ(MP_EOWNERDEAD, -EOWNERDEAD);
    ASSERT_EQ(MP_EMSGSIZE, -EMSGSIZE);
    ASSERT_EQ(MP_EINTR, -EINTR);
    /* mproc's own codes cannot be mistaken for an errno value */
    ASSERT_LT(MP_EEMPTY, -4095);
}

TEST(system_codes_and_unknown)
{
    ASSERT_STR_EQ(mp_err_name(-ENOENT), "ENOENT");
    ASSERT_TRUE(strlen(mp_strerror(-ENOENT)) > 0);
    ASSERT_TRUE(strcmp(mp_strerror(-ENOENT), "unknown error") != 0);
    ASSERT_STR_EQ(mp_strerror(0), "success");
    ASSERT_STR_EQ(mp_strerror(12345), "unknown error");
    ASSERT_STR_EQ(mp_strerror(-99999), "unknown error");
    ASSERT_STR_EQ(mp_strerror(-4000), "unknown error");
    ASSERT_STR_EQ(mp_err_name(-99999), "unknown");
    ASSERT_STR_EQ(mp_err_name(7), "unknown");
}

TEST(version)
{
    ASSERT_STR_EQ(mp_version_string(), MP_VERSION_STRING);
    ASSERT_EQ(MP_VERSION_HEX, (MP_VERSION_MAJOR << 16) | (MP_VERSION_MINOR << 8) | MP_VERSION_PATCH);
}
