/* fake_streams.h - lines of C source shared by the stand-in CUDA drivers that
 * test_cuda_rt.c and test_cuda_aot.c build at test time: they record the
 * stream each operation is given. fake_want_stream(s) names the stream every
 * operation of what follows should be given (and zeroes the counts);
 * fake_stream_misses() counts those given another, fake_ctx_syncs() the
 * context-wide synchronizations (cuCtxSynchronize, whose definition in each
 * driver adds to ctx_syncs). A driver calls seen(stream) in each of its
 * stream-ordered functions. */
#ifndef SEQ_TEST_FAKE_STREAMS_H
#define SEQ_TEST_FAKE_STREAMS_H

#define FAKE_DRIVER_STREAMS                                                                        \
  "static void *want_stream;", "static int stream_misses, ctx_syncs;",                             \
      "void fake_want_stream(void *s) { want_stream = s; stream_misses = ctx_syncs = 0; }",        \
      "int fake_stream_misses(void) { return stream_misses; }",                                    \
      "int fake_ctx_syncs(void) { return ctx_syncs; }",                                            \
      "static void seen(void *st) { if (st != want_stream) stream_misses++; }",                    \
      "int cuStreamSynchronize(void *st) { seen(st); return st ? 0 : 1; }",

#endif
