/* test_cpu_gemm.c - the CPU runtime's GEMM (runtime/cpu_gemm.c) against a
 * plain double-precision loop, at the edges of its blocking: every leftover
 * row count of the 12-row (AVX-512), 6-row (AVX2) and 4-row (generic)
 * kernels, column counts that are not whole 32-float panels or 16- and
 * 8-float slices, K past the 256-deep k block (the accumulate path), packing
 * from W and from W's transpose, and one and two threads. Every check runs
 * once per instruction set this machine has (rt_cpu_gemm_set_isa), so the
 * AVX2 and generic kernels are tested on an AVX-512 machine too. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_cpu.h"
#include "testutil.h"

static float val(int64_t i, int salt) {
  return (float)(((i * 7919 + salt * 104729) % 2001) / 1000.0 - 1.0);
}

/* C = A @ B with B given as B[K,N] (trans 0) or as W[N,K] (trans 1); checks
 * every element of C within a tolerance scaled by K. */
static void check(int64_t M, int64_t N, int64_t K, int trans, int threads) {
  rt_cpu_set_num_threads(threads);
  int64_t lda = K + 3, ldc = N + 5; /* strides wider than the rows */
  float *A = malloc(sizeof(float) * (size_t)(M * lda + 1));
  float *B = malloc(sizeof(float) * (size_t)(K * N + 1));
  float *C = malloc(sizeof(float) * (size_t)(M * ldc + 1));
  float *Bp = rt_cpu_alloc(4 * rt_cpu_packed_floats(K, N));
  assert_non_null(A);
  assert_non_null(B);
  assert_non_null(C);
  assert_non_null(Bp);
  for (int64_t i = 0; i < M * lda; i++) A[i] = val(i, 1);
  for (int64_t i = 0; i < K * N; i++) B[i] = val(i, 2);
  for (int64_t i = 0; i < M * ldc; i++) C[i] = 1e30f; /* must all be overwritten */
  rt_cpu_pack_b(K, N, B, trans ? K : N, trans, Bp);
  rt_cpu_sgemm_packed(M, N, K, A, lda, Bp, C, ldc);
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 0;
      for (int64_t k = 0; k < K; k++)
        s += (double)A[i * lda + k] * (trans ? B[j * K + k] : B[k * N + j]);
      if (fabs(s - C[i * ldc + j]) > 1e-5 * (double)(K + 1)) {
        print_error("M=%lld N=%lld K=%lld trans=%d threads=%d: C[%lld,%lld] = %g, want %g\n",
                    (long long)M, (long long)N, (long long)K, trans, threads, (long long)i,
                    (long long)j, (double)C[i * ldc + j], s);
        fail();
      }
    }
  /* The same product straight from the weight as given (no packing). */
  float *C2 = malloc(sizeof(float) * (size_t)(M * ldc + 1));
  assert_non_null(C2);
  for (int64_t i = 0; i < M * ldc; i++) C2[i] = 1e30f;
  rt_cpu_sgemm_w(M, N, K, A, lda, B, trans ? K : N, trans, NULL, C2, ldc);
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < ldc; j++) {
      if (j >= N) {
        assert_true(C2[i * ldc + j] == 1e30f);
        continue;
      }
      if (fabs((double)C2[i * ldc + j] - (double)C[i * ldc + j]) > 1e-5 * (double)(K + 1)) {
        print_error("unpacked M=%lld N=%lld K=%lld trans=%d: C[%lld,%lld] = %g, packed %g\n",
                    (long long)M, (long long)N, (long long)K, trans, (long long)i, (long long)j,
                    (double)C2[i * ldc + j], (double)C[i * ldc + j]);
        fail();
      }
    }
  free(C2);
  /* The padding between rows of C is not written. */
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = N; j < ldc; j++) assert_true(C[i * ldc + j] == 1e30f);
  rt_cpu_free(Bp);
  free(A);
  free(B);
  free(C);
}

/* The ISA names rt_cpu_gemm_set_isa takes and the ones rt_cpu_gemm_isa
 * reports, in the same order; each test below runs once per entry (its
 * initial state is the index), and is skipped where the machine lacks it. */
static const char *const isa_asked[] = {"generic", "avx2", "avx512"};
static const char *const isa_named[] = {"generic", "avx2+fma", "avx512f"};
static int isa_index[] = {0, 1, 2};

static void use_isa(void **st) {
  int i = *(int *)*st;
  if (strcmp(rt_cpu_gemm_set_isa(isa_asked[i]), isa_named[i]) != 0) skip();
}

/* Back to the default kernels and one thread after each test. */
static int restore_defaults(void **st) {
  (void)st;
  rt_cpu_gemm_set_isa(NULL);
  rt_cpu_set_num_threads(1);
  return 0;
}

static void test_row_tails(void **st) {
  use_isa(st);
  for (int64_t M = 1; M <= 26; M++) check(M, 64, 40, 0, 1);
}

/* Every leftover of the unpacked kernels' blocks: of rows and columns of
 * dot products (trans; 4 rows, up to 16 columns), of 32 or 64 columns (no trans),
 * and of their 4-, 8- or 16-deep k vectors, both ways. */
static void test_unpacked_tails(void **st) {
  use_isa(st);
  const int64_t Ns[] = {1, 3, 5, 63, 64, 65, 130}, Ks[] = {1, 15, 16, 17, 40};
  for (int64_t M = 1; M <= 9; M++)
    for (int i = 0; i < 7; i++)
      for (int k = 0; k < 5; k++)
        for (int tr = 0; tr <= 1; tr++) check(M, Ns[i], Ks[k], tr, 1);
  /* From 32 rows up, W @ x without packing runs as (x^T W^T)^T. */
  const int64_t Ms[] = {32, 33, 47, 64, 100};
  for (int m = 0; m < 5; m++)
    for (int i = 0; i < 7; i++) check(Ms[m], Ns[i], 40, 1, 1);
}

/* Packing from W's transpose goes through 16 x 16 register transposes for
 * full panels: every k leftover of the 16-deep blocks, and partial panels. */
static void test_transposed_packing(void **st) {
  use_isa(st);
  const int64_t Ks[] = {1, 15, 16, 17, 33, 48, 300}, Ns[] = {16, 31, 32, 33, 64, 65};
  for (int k = 0; k < 7; k++)
    for (int n = 0; n < 6; n++) check(13, Ns[n], Ks[k], 1, 1);
}

static void test_column_tails(void **st) {
  use_isa(st);
  const int64_t Ns[] = {1, 7, 31, 33, 100};
  for (int i = 0; i < 5; i++) {
    check(5, Ns[i], 17, 0, 1);
    check(13, Ns[i], 17, 1, 1);
  }
}

static void test_deep_k(void **st) {
  use_isa(st);
  check(3, 70, 600, 0, 1);  /* three k blocks, small M: split partial sums */
  check(30, 40, 257, 1, 1); /* one element past the first k block */
}

static void test_rnn_shapes(void **st) {
  use_isa(st);
  /* The recurrent step ([B, H] @ [H, 4H]) and a hoisted projection. */
  check(1, 1024, 256, 1, 1);
  check(8, 1024, 256, 1, 1);
  check(300, 96, 64, 1, 1);
}

static void test_two_threads(void **st) {
  use_isa(st);
  check(1, 1024, 256, 1, 2);  /* split by panels */
  check(8, 1024, 256, 0, 2);  /* split by panels */
  check(500, 256, 64, 1, 2);  /* split by rows */
  check(200, 100, 300, 0, 2); /* rows, ragged panels, two k blocks */
}

static void test_empty_and_unpacked(void **st) {
  use_isa(st);
  /* K == 0 gives zeros; M == 0 or N == 0 writes nothing. */
  float C[6] = {1, 2, 3, 4, 5, 6}, A[1] = {0}, Bp[32] = {0};
  rt_cpu_sgemm_packed(2, 3, 0, A, 0, Bp, C, 3);
  for (int i = 0; i < 6; i++) assert_true(C[i] == 0.0f);
  C[0] = 9;
  rt_cpu_sgemm_packed(0, 3, 4, A, 4, Bp, C, 3);
  rt_cpu_sgemm_packed(2, 0, 4, A, 4, Bp, C, 3);
  assert_true(C[0] == 9.0f);
  assert_int_equal(rt_cpu_packed_floats(10, 33), 10 * 64);
  assert_int_equal(rt_cpu_packed_floats(-1, 33), 0);
  /* The unpacked entry point packs by itself. */
  float a[2 * 3] = {1, 2, 3, 4, 5, 6}, b[3 * 2] = {1, 0, 0, 1, 1, 1}, c[4];
  rt_cpu_sgemm(2, 2, 3, a, 3, b, 2, c, 2);
  assert_true(c[0] == 4 && c[1] == 5 && c[2] == 10 && c[3] == 11);
}

/* The best ISA this machine runs, by the features the kernels use and
 * nothing more: AVX-512F alone selects the 512-bit kernels (a VM may hide
 * the rest of x86-64-v4). */
static const char *best_isa(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2+fma";
#endif
  return "generic";
}

/* Without $SEQ_CPU_ISA the best runs; the variable and rt_cpu_gemm_set_isa
 * ask for another, and a request above the machine falls back to the best
 * it has. */
static void test_kernel_isa(void **st) {
  (void)st;
  const char *best = best_isa(), *env = getenv("SEQ_CPU_ISA");
  char *saved = env ? strdup(env) : NULL;
  unsetenv("SEQ_CPU_ISA");
  assert_string_equal(rt_cpu_gemm_set_isa(NULL), best);
  assert_string_equal(rt_cpu_gemm_isa(), best);
  assert_string_equal(rt_cpu_gemm_set_isa("generic"), "generic");
  assert_string_equal(rt_cpu_gemm_set_isa("no-such-isa"), "generic"); /* unchanged */
  assert_string_equal(rt_cpu_gemm_set_isa("avx512"), best); /* the top: the best there is */
  const char *avx2 = strcmp(best, "generic") == 0 ? "generic" : "avx2+fma";
  assert_string_equal(rt_cpu_gemm_set_isa("avx2"), avx2);
  assert_string_equal(rt_cpu_gemm_set_isa("avx2+fma"), avx2);
  setenv("SEQ_CPU_ISA", "generic", 1);
  assert_string_equal(rt_cpu_gemm_set_isa(NULL), "generic");
  setenv("SEQ_CPU_ISA", "avx512", 1);
  assert_string_equal(rt_cpu_gemm_set_isa(NULL), best);
  setenv("SEQ_CPU_ISA", "bogus", 1); /* ignored */
  assert_string_equal(rt_cpu_gemm_set_isa(NULL), best);
  if (saved)
    setenv("SEQ_CPU_ISA", saved, 1);
  else
    unsetenv("SEQ_CPU_ISA");
  free(saved);
}

/* One entry per ISA; restore_defaults runs after each. */
// clang-format off
#define PER_ISA(f)                                                                                 \
  {#f "/generic", f, NULL, restore_defaults, &isa_index[0]},                                       \
      {#f "/avx2", f, NULL, restore_defaults, &isa_index[1]},                                      \
      {#f "/avx512", f, NULL, restore_defaults, &isa_index[2]}
// clang-format on

int main(void) {
  const struct CMUnitTest tests[] = {
      PER_ISA(test_row_tails),
      PER_ISA(test_column_tails),
      PER_ISA(test_deep_k),
      PER_ISA(test_rnn_shapes),
      PER_ISA(test_two_threads),
      PER_ISA(test_empty_and_unpacked),
      PER_ISA(test_unpacked_tails),
      PER_ISA(test_transposed_packing),
      cmocka_unit_test_teardown(test_kernel_isa, restore_defaults),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
