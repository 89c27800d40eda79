/* test_util.h — shared helpers for the CUnit test programs. */
#ifndef KVS_TEST_UTIL_H
#define KVS_TEST_UTIL_H

#include <CUnit/CUnit.h>

/* Run the given suite table with the basic interface; returns the process exit status
 * (0 if every test passed). Each test program's main() is just: return kvs_test_main(...). */
typedef struct { const char *name; CU_TestFunc fn; } kvs_test;
int kvs_test_main(const char *suite, const kvs_test *tests, int n_tests);

/* Path of the default model (models/…gguf or $KVSIEVE_MODEL), or NULL if the file is absent. */
const char *kvs_test_model_path(void);
/* Source and build directories (from ctest's environment, else "." / "build"). */
const char *kvs_test_source_dir(void);
const char *kvs_test_build_dir(void);

#endif
