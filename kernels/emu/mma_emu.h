// The emulator's tensor cores: mma.sync, ldmatrix and the operand rounding of kernels/mma.cuh
// as warp-collective operations, with the numerics of the hardware (the PTX path of
// mma.cuh is one instruction per function; this is what that instruction does).
//
// An mma is collective: each lane holds a few registers of the warp's A, B and C tiles (the
// fragment layouts at the top of mma.cuh). Each lane deposits its A and B registers at three
// warp barriers (64 bits each: a[0..1], a[2..3], b[0..1]), so that every lane sees the whole
// of A and B, and then computes its own four accumulators:
//
//   c[i] += Σ_k A(row_i, k) · B(k, col_i)   for k = 0, 1, …, K−1, one FP32 add at a time
//
// The operands are TF32 or 16-bit values; their products are exact in FP32, so the only
// rounding is that of the FP32 sums. (The hardware adds its products in an order and with
// internal widths that NVIDIA does not specify, so an emulated sum can differ from the
// GPU's in the last bits of FP32, no more.) A TF32 operand is read as the tensor core reads
// a 32-bit register: its 13 low bits are ignored, which is why kernels round with to_tf32
// first. A lane that did not arrive (it returned early; mma.sync must be called by the whole
// warp) contributes NaNs, so a kernel that breaks the rule gets NaNs, not plausible numbers.
//
// ldmatrix is collective too: the lanes deposit the row addresses at one barrier, then each
// lane reads its two 16-bit values of each matrix from shared memory.
#pragma once

namespace scratchnet_emu {

inline unsigned round_tf32_bits(float x) {
    const unsigned bits = std::bit_cast<unsigned>(x);
    if (!std::isfinite(x)) return bits;
    return (bits + 0x1000u) & 0xffffe000u;  // round half away from zero on the 13 dropped bits
}

inline unsigned pack_bf16_rn(float lo, float hi) {
    return static_cast<unsigned>(to_bfloat16_bits(lo)) | (static_cast<unsigned>(to_bfloat16_bits(hi)) << 16);
}

inline unsigned pack_f16_rn(float lo, float hi) {
    return static_cast<unsigned>(to_half_bits(lo)) | (static_cast<unsigned>(to_half_bits(hi)) << 16);
}

// The warp's A and B registers, gathered: a[lane][reg], b[lane][reg].
struct WarpFragments {
    unsigned a[32][4];
    unsigned b[32][2];
};

inline WarpFragments gather_fragments(const unsigned a[4], const unsigned b[2]) {
    WarpFragments f;
    const unsigned long long deposits[3] = {
        a[0] | (static_cast<unsigned long long>(a[1]) << 32),
        a[2] | (static_cast<unsigned long long>(a[3]) << 32),
        b[0] | (static_cast<unsigned long long>(b[1]) << 32),
    };
    for (int d = 0; d < 3; ++d) {
        unsigned group = 0;
        const unsigned long long* v = warp_barrier(0xffffffffu, deposits[d], &group);
        for (unsigned l = 0; l < 32; ++l) {
            const unsigned long long bits = ((group >> l) & 1u) ? v[l] : poison_bits;
            const unsigned lo = static_cast<unsigned>(bits), hi = static_cast<unsigned>(bits >> 32);
            if (d < 2) {
                f.a[l][2 * d] = lo;
                f.a[l][2 * d + 1] = hi;
            } else {
                f.b[l][0] = lo;
                f.b[l][1] = hi;
            }
        }
    }
    return f;
}

// The four accumulators of the caller: rows g and g+8, columns 2t and 2t+1.
template <class AElement, class BElement>
inline void mma_accumulate(float c[4], int k_len, AElement a_at, BElement b_at) {
    const unsigned lane = current_thread().lane;
    const int g = static_cast<int>(lane / 4), t = static_cast<int>(lane % 4);
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + (i % 2);
        float acc = c[i];
        for (int k = 0; k < k_len; ++k) acc += a_at(row, k) * b_at(k, col);
        c[i] = acc;
    }
}

inline float tf32_operand(unsigned bits) { return std::bit_cast<float>(bits & 0xffffe000u); }

// m16n8k8, TF32: A(r, k) is register (r ≥ 8) + 2·(k ≥ 4) of lane 4·(r mod 8) + (k mod 4);
// B(k, n) is register (k ≥ 4) of lane 4n + (k mod 4).
inline void mma_tf32_m16n8k8(float c[4], const unsigned a[4], const unsigned b[2]) {
    const WarpFragments f = gather_fragments(a, b);
    mma_accumulate(
        c, 8,
        [&](int r, int k) { return tf32_operand(f.a[4 * (r % 8) + k % 4][(r >= 8) + 2 * (k >= 4)]); },
        [&](int k, int n) { return tf32_operand(f.b[4 * n + k % 4][k >= 4]); });
}

// m16n8k16, 16-bit: A(r, k) is half k mod 2 of register (r ≥ 8) + 2·(k ≥ 8) of lane
// 4·(r mod 8) + (k mod 8)/2; B(k, n) is half k mod 2 of register (k ≥ 8) of lane
// 4n + (k mod 8)/2.
template <class Decode>
inline void mma_16bit_m16n8k16(float c[4], const unsigned a[4], const unsigned b[2], Decode decode) {
    const WarpFragments f = gather_fragments(a, b);
    auto half_of = [](unsigned reg, int k) { return static_cast<unsigned short>(reg >> (16 * (k % 2))); };
    mma_accumulate(
        c, 16,
        [&](int r, int k) { return decode(half_of(f.a[4 * (r % 8) + (k % 8) / 2][(r >= 8) + 2 * (k >= 8)], k)); },
        [&](int k, int n) { return decode(half_of(f.b[4 * n + (k % 8) / 2][k >= 8], k)); });
}

inline void mma_bf16_m16n8k16(float c[4], const unsigned a[4], const unsigned b[2]) {
    mma_16bit_m16n8k16(c, a, b, [](unsigned short h) { return bfloat16_bits_to_float(h); });
}

inline void mma_f16_m16n8k16(float c[4], const unsigned a[4], const unsigned b[2]) {
    mma_16bit_m16n8k16(c, a, b, [](unsigned short h) { return half_bits_to_float(h); });
}

// ldmatrix.m8n8.x{count}[.trans].b16: matrix i's rows are at the addresses of lanes
// 8i..8i+7; lane l receives row l/4, columns 2(l%4) and 2(l%4)+1 of each matrix (or, with
// `trans`, column l/4, rows 2(l%4) and 2(l%4)+1), the lower index in the low half.
inline void ldmatrix(unsigned* r, int count, const void* row, bool trans) {
    unsigned group = 0;
    const unsigned long long* v = warp_barrier(0xffffffffu, reinterpret_cast<unsigned long long>(row), &group);
    const unsigned short* rows[32];
    for (unsigned l = 0; l < 32; ++l) rows[l] = ((group >> l) & 1u) ? reinterpret_cast<const unsigned short*>(v[l]) : nullptr;
    const unsigned lane = current_thread().lane;
    const unsigned q = lane / 4, p = 2 * (lane % 4);
    for (int i = 0; i < count; ++i) {
        auto at = [&](unsigned rr, unsigned cc) -> unsigned {
            const unsigned short* base = rows[8 * i + rr];
            if (base == nullptr) return 0xffffu;  // a lane that did not arrive: NaN halves
            return base[cc];
        };
        const unsigned lo = trans ? at(p, q) : at(q, p);
        const unsigned hi = trans ? at(p + 1, q) : at(q, p + 1);
        r[i] = lo | (hi << 16);
    }
}

}  // namespace scratchnet_emu
