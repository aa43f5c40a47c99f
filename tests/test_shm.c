/* Named shared memory: DESIGN section 3. */
#include "harness.h"

#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static char name[64];

static void fresh_name(const char *tag)
{
    snprintf(name, sizeof name, "mproc-test-%s-%d", tag, (int)getpid());
}

static bool in_dev_shm(const char *n)
{
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/%s", n);
    return access(path, F_OK) == 0;
}

/* Attaches by name in another process, checks the parent's bytes, answers. */
static int attach_and_answer(void *arg)
{
    (void)arg;
    mp_shm *s;
    if (mp_shm_attach(&s, name) != 0)
        return 1;
    char *p = mp_shm_ptr(s);
    int ok = mp_shm_size(s) == 4096 && strcmp(p, "hello") == 0;
    strcpy(p + 100, "world");
    mp_shm_free(s);
    return ok ? 0 : 2;
}

TEST(create_attach_in_another_process_unlink)
{
    fresh_name("a");
    mp_shm *s;
    ASSERT_OK(mp_shm_create(&s, name, 4096));
    ASSERT_STR_EQ(mp_shm_name(s), name);
    ASSERT_EQ(mp_shm_size(s), 4096);
    char *p = mp_shm_ptr(s);
    ASSERT_EQ(p[0], 0); /* zeroed */
    strcpy(p, "hello");
    mp_process *c;
    ASSERT_OK(mp_process_new(&c, attach_and_answer, NULL, NULL));
    ASSERT_OK(mp_process_start(c));
    ASSERT_OK(mp_process_join(c, 10));
    ASSERT_EQ(mp_process_exitcode(c), 0);
    ASSERT_STR_EQ(p + 100, "world");
    mp_process_free(c);

    struct stat st;
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    ASSERT_EQ(stat(path, &st), 0);
    ASSERT_EQ(st.st_mode & 0777, 0600);

    ASSERT_OK(mp_shm_unlink(s));
    ASSERT_TRUE(!in_dev_shm(name));
    ASSERT_STR_EQ(p, "hello"); /* still mapped */
    ASSERT_ERR(mp_shm_unlink(s), -ENOENT);
    mp_shm *t;
    ASSERT_ERR(mp_shm_attach(&t, name), -ENOENT);
    ASSERT_TRUE(t == NULL);
    mp_shm_free(s);
}

TEST(exists_and_leading_slash)
{
    fresh_name("b");
    mp_shm *s, *t;
    char slashed[80];
    snprintf(slashed, sizeof slashed, "/%s", name);
    ASSERT_OK(mp_shm_create(&s, slashed, 100));
    ASSERT_STR_EQ(mp_shm_name(s), name); /* no '/' */
    ASSERT_ERR(mp_shm_create(&t, name, 100), -EEXIST);
    ASSERT_OK(mp_shm_attach(&t, slashed));
    ASSERT_EQ(mp_shm_size(t), 100);
    ASSERT_OK(mp_shm_unlink(t));
    mp_shm_free(t);
    mp_shm_free(s);
    ASSERT_TRUE(!in_dev_shm(name));
}

TEST(fresh_names)
{
    mp_shm *a, *b;
    ASSERT_OK(mp_shm_create(&a, NULL, 10));
    ASSERT_OK(mp_shm_create(&b, NULL, 10));
    ASSERT_TRUE(strcmp(mp_shm_name(a), mp_shm_name(b)) != 0);
    ASSERT_TRUE(strchr(mp_shm_name(a), '/') == NULL);
    ASSERT_TRUE(in_dev_shm(mp_shm_name(a)));
    ASSERT_OK(mp_shm_unlink(a));
    ASSERT_OK(mp_shm_unlink(b));
    ASSERT_TRUE(!in_dev_shm(mp_shm_name(a)));
    mp_shm_free(a);
    mp_shm_free(b);
}

TEST(bad_input)
{
    mp_shm *s = (mp_shm *)1;
    char long_name[300];
    memset(long_name, 'x', 201);
    long_name[201] = '\0';
    ASSERT_ERR(mp_shm_create(NULL, "x", 10), MP_EINVAL);
    ASSERT_ERR(mp_shm_create(&s, "x", 0), MP_EINVAL);
    ASSERT_TRUE(s == NULL);
    ASSERT_ERR(mp_shm_create(&s, "", 10), MP_EINVAL);
    ASSERT_ERR(mp_shm_create(&s, "/", 10), MP_EINVAL);
    ASSERT_ERR(mp_shm_create(&s, long_name, 10), MP_EINVAL);
    ASSERT_ERR(mp_shm_create(&s, "a/b", 10), MP_EINVAL);
    ASSERT_ERR(mp_shm_create(&s, "..", 10), MP_EINVAL);
    ASSERT_ERR(mp_shm_create(&s, "sp ace", 10), MP_EINVAL);
    ASSERT_ERR(mp_shm_attach(&s, NULL), MP_EINVAL);
    ASSERT_ERR(mp_shm_attach(NULL, "x"), MP_EINVAL);
    ASSERT_ERR(mp_shm_attach(&s, "../etc"), MP_EINVAL);
    ASSERT_ERR(mp_shm_unlink(NULL), MP_EINVAL);
    ASSERT_TRUE(mp_shm_ptr(NULL) == NULL);
    ASSERT_EQ(mp_shm_size(NULL), 0);
    ASSERT_TRUE(mp_shm_name(NULL) == NULL);
    mp_shm_free(NULL);
    long_name[200] = '\0'; /* 200 is the longest allowed */
    ASSERT_OK(mp_shm_create(&s, long_name, 10));
    ASSERT_OK(mp_shm_unlink(s));
    mp_shm_free(s);
}
