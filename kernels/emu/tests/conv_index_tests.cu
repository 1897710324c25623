// conv_index_tests.cu — the index helpers of kernels/conv_index.cuh against plain division,
// for every small radix and step (emulator only; tests/emulator.rs launches it).
#include "conv_index.cuh"

// One thread. out[0]: rows where RowDigits3 disagrees with k / (mid_n·inner_n),
// k / inner_n % mid_n, k % inner_n, after walking `walk` steps from each start k in
// [0, 2·mid_n·inner_n); out[1]: the same for RowDigits2; out[2]: n for which FastDiv(d).div(n)
// differs from n / d, for d in [1, 64] and n in [0, 4096) and the 4096 values below 2^31;
// out[3]: the number of comparisons made (so that a test that compares nothing fails).
extern "C" __global__ void emu_test_conv_index(long long* __restrict__ out, int walk) {
    long long bad3 = 0, bad2 = 0, bad_div = 0, checked = 0;
    const int steps[] = {1, 2, 3, 4, 7, 8};
    for (int mid_n = 1; mid_n <= 6; ++mid_n) {
        for (int inner_n = 1; inner_n <= 6; ++inner_n) {
            const int per = mid_n * inner_n;
            for (int step : steps) {
                for (int k0 = 0; k0 < 2 * per; ++k0) {
                    RowDigits3 r3;
                    RowDigits2 r2;
                    r3.start(k0, step, mid_n, inner_n);
                    r2.start(k0, step, inner_n);
                    for (int i = 0, k = k0; i < walk; ++i, k += step) {
                        bad3 += r3.outer != k / per || r3.mid != k / inner_n % mid_n || r3.inner != k % inner_n;
                        bad2 += r2.outer != k / inner_n || r2.inner != k % inner_n;
                        checked += 2;
                        r3.advance();
                        r2.advance();
                    }
                }
            }
        }
    }
    for (int d = 1; d <= 64; ++d) {
        const FastDiv by_d(d);
        for (int i = 0; i < 4096; ++i) {
            const int lo = i, hi = 0x7fffffff - i;
            bad_div += by_d.div(lo) != lo / d;
            bad_div += by_d.div(hi) != hi / d;
            checked += 2;
        }
    }
    out[0] = bad3;
    out[1] = bad2;
    out[2] = bad_div;
    out[3] = checked;
}
