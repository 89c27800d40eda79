/* kvsieve.c — placeholder main, replaced by the command dispatcher. */
#include <stdio.h>
int main(void) { puts("kvsieve"); return 0; }
