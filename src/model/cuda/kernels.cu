// distill's CUDA kernels: the device side of src/model/cuda/ops.rs.
//
// build.rs compiles this file to PTX (nvcc --ptx, compute capability from
// CUDA_COMPUTE_CAP, 90 by default) when the `cuda` feature is on; the PTX is
// embedded in the binary and loaded once per device (src/model/cuda/mod.rs).
//
// Conventions:
// - images are channels-last matrices of pixel rows, `(batch * h * w, c)`,
//   as in src/model/ops.rs; patches have `9 * c` columns, column
//   `tap * c + ch` with `tap = 3 * dy + dx`;
// - every kernel walks its index space with a grid-stride loop and checks
//   bounds, so any grid size is correct (the host caps the grid, launch.rs);
// - sizes are 32-bit: the host refuses tensors over 2^31 values, so
//   `i + stride` cannot wrap;
// - no atomics: every output value is written by exactly one thread, and
//   every sum runs in a fixed order, so results are the same on every run.

#define GRID_STRIDE(i, n)                                                   \
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n);   \
         i += blockDim.x * gridDim.x)

// The code of an output whose ReLU was off (no gradient flows back).
#define RELU_OFF 255u

// --- 3x3 patches (padding 1) --------------------------------------------

// out[(pixel, tap, ch)] = x[pixel + (dy - 1, dx - 1), ch], 0 outside.
extern "C" __global__ void im2col3x3_fwd(const float *x, float *out, unsigned int batch,
                                         unsigned int h, unsigned int w, unsigned int c) {
    const unsigned int k = 9 * c;
    const unsigned int n = batch * h * w * k;
    GRID_STRIDE(i, n) {
        const unsigned int col = i % k, pix = i / k;
        const unsigned int tap = col / c, ch = col % c;
        const unsigned int px = pix % w, rest = pix / w;
        const unsigned int py = rest % h, b = rest / h;
        const int sy = (int)py + (int)(tap / 3) - 1;
        const int sx = (int)px + (int)(tap % 3) - 1;
        float v = 0.0f;
        if (sy >= 0 && sy < (int)h && sx >= 0 && sx < (int)w) {
            v = x[((b * h + (unsigned int)sy) * w + (unsigned int)sx) * c + ch];
        }
        out[i] = v;
    }
}

// The adjoint (col2im), gathered per input value: gx[(pixel, ch)] += the
// sum over taps of the patch values copied from it. Taps run from 8 down to
// 0, the order in which the CPU op's backward meets them (output pixels in
// raster order), so the sums round the same way.
extern "C" __global__ void col2im3x3_bwd(const float *gout, float *gx, unsigned int batch,
                                         unsigned int h, unsigned int w, unsigned int c) {
    const unsigned int k = 9 * c;
    const unsigned int n = batch * h * w * c;
    GRID_STRIDE(i, n) {
        const unsigned int ch = i % c, pix = i / c;
        const unsigned int sx = pix % w, rest = pix / w;
        const unsigned int sy = rest % h, b = rest / h;
        float acc = 0.0f;
        for (int tap = 8; tap >= 0; --tap) {
            // The output pixel whose tap `tap` reads (sy, sx).
            const int oy = (int)sy - tap / 3 + 1;
            const int ox = (int)sx - tap % 3 + 1;
            if (oy >= 0 && oy < (int)h && ox >= 0 && ox < (int)w) {
                acc += gout[((b * h + (unsigned int)oy) * w + (unsigned int)ox) * k +
                            (unsigned int)tap * c + ch];
            }
        }
        gx[i] += acc;
    }
}

// --- 2x2 stride-2 max-pool ------------------------------------------------

// out[(b, oy, ox, ch)] = max of the window; arg = the index in x that won
// (the first maximum in the order (0,0), (0,1), (1,0), (1,1), as on the CPU).
extern "C" __global__ void max_pool2_fwd(const float *x, float *out, unsigned int *arg,
                                         unsigned int batch, unsigned int h, unsigned int w,
                                         unsigned int c) {
    const unsigned int ho = h / 2, wo = w / 2;
    const unsigned int n = batch * ho * wo * c;
    GRID_STRIDE(i, n) {
        const unsigned int ch = i % c, pix = i / c;
        const unsigned int ox = pix % wo, rest = pix / wo;
        const unsigned int oy = rest % ho, b = rest / ho;
        const unsigned int top = ((b * h + 2 * oy) * w + 2 * ox) * c + ch;
        const unsigned int at[4] = {top, top + c, top + w * c, top + w * c + c};
        unsigned int best = at[0];
        for (int q = 1; q < 4; ++q) {
            if (x[at[q]] > x[best]) best = at[q];
        }
        out[i] = x[best];
        arg[i] = best;
    }
}

// gx[arg[i]] += gout[i]. Windows do not overlap, so no two threads write
// the same value.
extern "C" __global__ void max_pool2_bwd(const float *gout, const unsigned int *arg, float *gx,
                                         unsigned int n) {
    GRID_STRIDE(i, n) { gx[arg[i]] += gout[i]; }
}

// --- bias + ReLU (+ pool) epilogue of a matmul ------------------------------

// out = relu?(y + bias) for y: (rows, o). code: 0 where the gradient flows,
// RELU_OFF where the ReLU was off.
extern "C" __global__ void bias_act_fwd(const float *y, const float *bias, float *out,
                                        unsigned char *code, unsigned int rows, unsigned int o,
                                        unsigned int relu) {
    const unsigned int n = rows * o;
    GRID_STRIDE(i, n) {
        float v = y[i] + bias[i % o];
        unsigned char on = 0;
        if (relu) {
            if (v > 0.0f) {
                on = 0;
            } else {
                on = RELU_OFF;
                v = 0.0f;
            }
        }
        out[i] = v;
        code[i] = on;
    }
}

// gy += gout where the code lets the gradient through.
extern "C" __global__ void bias_act_bwd(const float *gout, const unsigned char *code, float *gy,
                                        unsigned int n) {
    GRID_STRIDE(i, n) {
        if (code[i] != RELU_OFF) gy[i] += gout[i];
    }
}

// The pooled epilogue: out[(b, oy, ox, ch)] = max over the 2x2 window of
// relu?(y + bias) with y: (batch * h * w, o) channels-last. code: the window
// position that won (0..3, first maximum wins), or RELU_OFF where the
// maximum is not positive under the ReLU (the CPU op's rule).
extern "C" __global__ void bias_act_pool_fwd(const float *y, const float *bias, float *out,
                                             unsigned char *code, unsigned int batch,
                                             unsigned int h, unsigned int w, unsigned int o,
                                             unsigned int relu) {
    const unsigned int ho = h / 2, wo = w / 2;
    const unsigned int n = batch * ho * wo * o;
    GRID_STRIDE(i, n) {
        const unsigned int ch = i % o, pix = i / o;
        const unsigned int ox = pix % wo, rest = pix / wo;
        const unsigned int oy = rest % ho, b = rest / ho;
        const unsigned int top = (b * h + 2 * oy) * w + 2 * ox;
        const unsigned int rows[4] = {top, top + 1, top + w, top + w + 1};
        const float bc = bias[ch];
        unsigned int best = 0;
        float value = 0.0f;
        for (unsigned int q = 0; q < 4; ++q) {
            float v = y[rows[q] * o + ch] + bc;
            if (relu) v = fmaxf(v, 0.0f);
            if (q == 0 || v > value) {
                best = q;
                value = v;
            }
        }
        out[i] = value;
        code[i] = (relu && !(value > 0.0f)) ? (unsigned char)RELU_OFF : (unsigned char)best;
    }
}

// The pooled epilogue's backward, gathered per conv value: gy[(r, ch)] +=
// gout of its window if it won there.
extern "C" __global__ void bias_act_pool_bwd(const float *gout, const unsigned char *code,
                                             float *gy, unsigned int batch, unsigned int h,
                                             unsigned int w, unsigned int o) {
    const unsigned int ho = h / 2, wo = w / 2;
    const unsigned int n = batch * h * w * o;
    GRID_STRIDE(i, n) {
        const unsigned int ch = i % o, pix = i / o;
        const unsigned int px = pix % w, rest = pix / w;
        const unsigned int py = rest % h, b = rest / h;
        const unsigned int oy = py / 2, ox = px / 2;
        if (oy < ho && ox < wo) {
            const unsigned int oi = ((b * ho + oy) * wo + ox) * o + ch;
            const unsigned int pos = (py % 2) * 2 + (px % 2);
            if (code[oi] == pos) gy[i] += gout[oi];
        }
    }
}

// --- deterministic column sums ---------------------------------------------

// partial[(part, j)] = sum over the part's rows r of src[(r, j)], skipping
// values whose code is RELU_OFF when `code` is not null. Rows are summed in
// order; parts are fixed by the host (launch.rs), not by the grid.
extern "C" __global__ void column_sums_partial(const float *src, const unsigned char *code,
                                               unsigned int rows, unsigned int cols,
                                               unsigned int rows_per_part, unsigned int parts,
                                               float *partial) {
    const unsigned int n = parts * cols;
    GRID_STRIDE(i, n) {
        const unsigned int j = i % cols, part = i / cols;
        const unsigned int r0 = part * rows_per_part;
        const unsigned int r1 = min(rows, r0 + rows_per_part);
        float s = 0.0f;
        for (unsigned int r = r0; r < r1; ++r) {
            const unsigned int idx = r * cols + j;
            if (code == 0 || code[idx] != RELU_OFF) s += src[idx];
        }
        partial[i] = s;
    }
}

// out[j] = beta * out[j] + scale * (sum over parts, in order) + offset;
// out is not read when beta is 0 (it may be uninitialised).
extern "C" __global__ void column_sums_finish(const float *partial, unsigned int parts,
                                              unsigned int cols, float scale, float offset,
                                              float beta, float *out) {
    GRID_STRIDE(j, cols) {
        float s = 0.0f;
        for (unsigned int p = 0; p < parts; ++p) s += partial[p * cols + j];
        const float prev = beta != 0.0f ? beta * out[j] : 0.0f;
        out[j] = prev + scale * s + offset;
    }
}

// --- the fused KD loss ------------------------------------------------------

// One thread per row of logits s: (rows, classes). With ls = log_softmax(s)
// and lt = log_softmax(s / t):
//   row_loss = hard_w * -sum(y * ls) + soft_w * t^2 * -sum(p * lt)
//   grad     = inv_b * (hard_w * (sum(y) softmax(s) - y)
//                       + soft_w * t * (sum(p) softmax(s / t) - p))
// `hard` (target rows y) or `probs` (teacher probabilities p) may be null,
// and that term is skipped. grad is the gradient of the batch loss
// sum(row_loss) / batch with respect to s.
extern "C" __global__ void kd_loss_rows(const float *logits, const float *hard, float hard_w,
                                        const float *probs, float soft_w, float t,
                                        unsigned int rows, unsigned int classes, float inv_b,
                                        float *row_loss, float *grad) {
    GRID_STRIDE(r, rows) {
        const float *s = logits + (size_t)r * classes;
        float *g = grad + (size_t)r * classes;
        float loss = 0.0f;
        for (unsigned int c = 0; c < classes; ++c) g[c] = 0.0f;
        if (hard != 0) {
            const float *y = hard + (size_t)r * classes;
            float m = -INFINITY;
            for (unsigned int c = 0; c < classes; ++c) m = fmaxf(m, s[c]);
            float sum = 0.0f;
            for (unsigned int c = 0; c < classes; ++c) sum += expf(s[c] - m);
            const float lse = m + logf(sum);
            float ysum = 0.0f, cross = 0.0f;
            for (unsigned int c = 0; c < classes; ++c) {
                ysum += y[c];
                cross += y[c] * (s[c] - lse);
            }
            const float k = hard_w * inv_b;
            for (unsigned int c = 0; c < classes; ++c) {
                g[c] += k * (ysum * expf(s[c] - lse) - y[c]);
            }
            loss += hard_w * -cross;
        }
        if (probs != 0) {
            const float *p = probs + (size_t)r * classes;
            const float inv_t = 1.0f / t;
            float m = -INFINITY;
            for (unsigned int c = 0; c < classes; ++c) m = fmaxf(m, s[c] * inv_t);
            float sum = 0.0f;
            for (unsigned int c = 0; c < classes; ++c) sum += expf(s[c] * inv_t - m);
            const float lse = m + logf(sum);
            float psum = 0.0f, cross = 0.0f;
            for (unsigned int c = 0; c < classes; ++c) {
                psum += p[c];
                cross += p[c] * (s[c] * inv_t - lse);
            }
            const float k = soft_w * t * inv_b;
            for (unsigned int c = 0; c < classes; ++c) {
                g[c] += k * (psum * expf(s[c] * inv_t - lse) - p[c]);
            }
            loss += soft_w * t * t * -cross;
        }
        row_loss[r] = loss;
    }
}

// dst += scale[0] * src: the backward of an op whose gradient was computed
// in its forward pass, scaled by the (device-resident) upstream gradient.
extern "C" __global__ void scaled_add(const float *scale, const float *src, float *dst,
                                      unsigned int n) {
    const float k = scale[0];
    GRID_STRIDE(i, n) { dst[i] += k * src[i]; }
}
