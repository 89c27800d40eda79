/* test_util.c — CUnit runner and paths shared by the test programs. */
#include "test_util.h"

#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int kvs_test_main(const char *suite_name, const kvs_test *tests, int n_tests)
{
    if (CU_initialize_registry() != CUE_SUCCESS) return 2;
    CU_pSuite suite = CU_add_suite(suite_name, NULL, NULL);
    if (!suite) return 2;
    for (int i = 0; i < n_tests; i++)
        if (!CU_add_test(suite, tests[i].name, tests[i].fn)) return 2;
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}

const char *kvs_test_source_dir(void)
{
    const char *s = getenv("KVS_SOURCE_DIR");
    return s ? s : ".";
}

const char *kvs_test_build_dir(void)
{
    const char *s = getenv("KVS_BUILD_DIR");
    return s ? s : "build";
}

const char *kvs_test_model_path(void)
{
    static char buf[4096];
    const char *env = getenv("KVSIEVE_MODEL");
    if (env && access(env, R_OK) == 0) return env;
    snprintf(buf, sizeof buf, "%s/models/smollm2-135m-instruct-q4_1.gguf", kvs_test_source_dir());
    return access(buf, R_OK) == 0 ? buf : NULL;
}
