/* std_cells.h - every standard cell with the dims docs/stdlib.md measures it
 * at (a model width around 256; the grid cells' rows of Y = 16 positions),
 * for the programs that go over all of them:
 * bench/stdlib_throughput.c and test_codegen_forms.c. A new std cell gets a
 * line here and a row in docs/stdlib.md. */
#ifndef SEQ_BENCH_STD_CELLS_H
#define SEQ_BENCH_STD_CELLS_H

typedef struct SeqStdCell {
  const char *file; /* relative to the source tree */
  const char *dims;
} SeqStdCell;

static const SeqStdCell SEQ_STD_CELLS[] = {
    {"stdlib/lstm.seq", "I=256,H=256"},
    {"stdlib/gru.seq", "I=256,H=256"},
    {"stdlib/rnn.seq", "I=256,H=256"},
    {"stdlib/mingru.seq", "I=256,H=256"},
    {"stdlib/minlstm.seq", "I=256,H=256"},
    {"stdlib/lru.seq", "H=256,N=256"},
    {"stdlib/s4d.seq", "H=256,N=64"},
    {"stdlib/s4.seq", "H=256,N=64"},
    {"stdlib/lssl.seq", "H=256,N=16"},
    {"stdlib/lssl_zoh.seq", "H=256,N=16"},
    {"stdlib/s5.seq", "H=256,P=256"},
    {"stdlib/mamba_ssm.seq", "d_inner=512,d_state=16,dt_rank=16"},
    {"stdlib/mamba.seq", "d_model=256,d_inner=512,d_state=16,d_conv=4,dt_rank=16"},
    {"stdlib/mamba2.seq", "d_model=256,ngroups=1,hpg=8,headdim=64,d_state=64,d_conv=4"},
    {"stdlib/linear_attention.seq", "I=256,NH=4,Dk=64,Dv=64"},
    {"stdlib/retnet.seq", "I=256,NH=4,P=32,Dv=64"},
    {"stdlib/gla.seq", "I=256,NH=4,Dk=64,Dv=64,R=16"},
    {"stdlib/mlstm.seq", "I=256,NH=4,DH=64"},
    {"stdlib/slstm.seq", "I=256,H=256"},
    {"stdlib/deltanet.seq", "I=256,NH=4,Dk=64,Dv=64"},
    {"stdlib/gated_deltanet.seq", "I=256,NH=4,Dk=64,Dv=64"},
    {"stdlib/deltaproduct.seq", "I=256,Dk=64,Dv=64"},
    {"stdlib/plstm.seq", "I=256,Dk=64,Dv=64,J=4"},
    {"stdlib/gam.seq", "D=256,Mem=64,K=4"},
    {"stdlib/paragru.seq", "I=256,H=256"},
    {"stdlib/paralstm.seq", "I=256,H=256"},
    {"stdlib/rwkv7.seq", "C=256,D_w=64,D_a=64,D_g=128"},
    {"stdlib/titans.seq", "I=256,D=64,Dh=128"},
    {"stdlib/lightnet.seq", "I=256,NH=4,Dk=64,Dv=64"},
    {"stdlib/lightnet2d.seq", "I=256,NH=4,Dk=64,Dv=64,Y=16"},
    {"stdlib/plstm2d.seq", "I=256,Dk=64,Dv=64,Y=16"},
};
#define SEQ_NSTD_CELLS ((int)(sizeof SEQ_STD_CELLS / sizeof SEQ_STD_CELLS[0]))

#endif
