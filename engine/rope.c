/* rope.c — rotary position tables (rope.h). */
#include "rope.h"

#include <math.h>
#include <stddef.h>

void kvs_rope_table(int n_pos, int hd, float base, float *cos_t, float *sin_t)
{
    int half = hd / 2;
    for (int i = 0; i < half; i++) {
        double inv_freq = pow((double)base, -2.0 * i / hd);
        for (int p = 0; p < n_pos; p++) {
            double a = (double)p * inv_freq;
            cos_t[(size_t)p * half + i] = (float)cos(a);
            sin_t[(size_t)p * half + i] = (float)sin(a);
        }
    }
}
