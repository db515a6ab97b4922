// ISA-independent planning of com.quake Attention (attention.h): the broadcast
// of the operands, tile sizes from the caches, the tasks (with the key split of
// decode shapes) and the combination of split partials. Built with the
// baseline flags; the per-ISA work is the block of attention_flash.h.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <utility>

#include "attention.h"

namespace quake {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// Dimension `axis` counted from the end (1 = last) of `shape`, or 1 when the
// shape has fewer axes (numpy broadcasting pads on the left).
int64_t dim_from_end(const std::vector<int64_t>& shape, size_t axis) {
  return axis <= shape.size() ? shape[shape.size() - axis] : 1;
}

size_t floor_pow2(size_t v) {
  size_t p = 1;
  while (p * 2 <= v) p *= 2;
  return p;
}

}  // namespace

// ---------------------------------------------------------------------------
// Layout.

std::string plan_attention_layout(const AttentionShapes& in, AttentionLayout* out) {
  const auto all_shapes = [&] {
    std::string s = "Q " + shape_text(in.q) + ", K " + shape_text(in.k) + ", V " + shape_text(in.v);
    return in.has_mask ? s + ", M " + shape_text(in.mask) : s;
  };
  if (in.q.size() < 2 || in.k.size() < 2 || in.v.size() < 2) {
    return "Q, K and V need at least 2 dimensions; got " + all_shapes();
  }
  const int64_t sq = dim_from_end(in.q, 2), d = dim_from_end(in.q, 1);
  const int64_t skv = dim_from_end(in.k, in.k_transposed ? 1 : 2), kd = dim_from_end(in.k, in.k_transposed ? 2 : 1);
  if (kd != d) {
    const char* layout = in.k_transposed ? "K is [..., D, Skv] with k_transposed=1" : "K is [..., Skv, D]";
    return std::string("K's head dim must equal Q's last dim (") + layout + "); got " + all_shapes();
  }
  if (dim_from_end(in.v, 2) != skv) return "V must be [..., Skv, Dv] with K's Skv; got " + all_shapes();
  const int64_t dv = dim_from_end(in.v, 1);
  const int64_t mq = in.has_mask ? dim_from_end(in.mask, 2) : 1, mk = in.has_mask ? dim_from_end(in.mask, 1) : 1;
  if ((mq != 1 && mq != sq) || (mk != 1 && mk != skv)) {
    return "M must be broadcastable to [..., Sq, Skv] = [..., " + std::to_string(sq) + ", " + std::to_string(skv) +
           "]; got " + all_shapes();
  }

  // Leading axes, right-aligned; axis 1 (counted from the right of the
  // leading axes) is the head axis.
  const auto lead = [](const std::vector<int64_t>& s) { return s.size() >= 2 ? s.size() - 2 : 0; };
  const size_t mask_rank = in.has_mask ? in.mask.size() : 0;
  const size_t lead_rank = std::max({lead(in.q), lead(in.k), lead(in.v), mask_rank >= 2 ? mask_rank - 2 : 0});
  std::vector<int64_t> out_lead(lead_rank);
  for (size_t a = 1; a <= lead_rank; ++a) {
    const int64_t q = dim_from_end(in.q, a + 2), k = dim_from_end(in.k, a + 2), v = dim_from_end(in.v, a + 2);
    const int64_t m = in.has_mask ? dim_from_end(in.mask, a + 2) : 1;
    int64_t dim = q;
    bool ok;
    if (a == 1) {  // heads: K/V heads divide Q's (GQA); the mask's is 1 or Q's
      ok = (k == 0 ? q == 0 : q % k == 0) && (v == 0 ? q == 0 : q % v == 0) && (m == 1 || m == q);
      if (!ok) {
        return "K's and V's head count (axis -3) must divide Q's, and M's must be 1 or Q's; got " + all_shapes();
      }
    } else {
      for (int64_t x : {k, v, m}) {
        if (dim == 1) dim = x;
      }
      ok = true;
      for (int64_t x : {q, k, v, m}) ok = ok && (x == 1 || x == dim);
      if (!ok) {
        const std::string axis = std::to_string(-static_cast<int64_t>(a) - 2);
        return "leading dims (axis " + axis + ") do not broadcast: " + all_shapes();
      }
    }
    out_lead[lead_rank - a] = dim;
  }

  out->out_shape = out_lead;
  out->out_shape.push_back(sq);
  out->out_shape.push_back(dv);
  out->sq = static_cast<size_t>(sq);
  out->skv = static_cast<size_t>(skv);
  out->d = static_cast<size_t>(d);
  out->dv = static_cast<size_t>(dv);
  out->mask_row_stride = mq == 1 ? 0 : static_cast<size_t>(mk);
  out->mask_col_broadcast = mk == 1 && skv != 1;

  // Element offsets of every output head's matrices: walk the leading index
  // (row-major) with one stride per operand and axis (0 where it broadcasts).
  size_t heads = 1;
  for (int64_t dim : out_lead) heads *= static_cast<size_t>(dim);
  out->q_off.assign(heads, 0);
  out->k_off.assign(heads, 0);
  out->v_off.assign(heads, 0);
  out->mask_off.assign(heads, 0);
  if (heads == 0) return "";
  struct Operand {
    const std::vector<int64_t>* shape;
    size_t matrix;
    std::vector<size_t>* off;
  };
  Operand ops[] = {{&in.q, static_cast<size_t>(sq * d), &out->q_off},
                   {&in.k, static_cast<size_t>(skv * d), &out->k_off},
                   {&in.v, static_cast<size_t>(skv * dv), &out->v_off},
                   {&in.mask, static_cast<size_t>(mq * mk), &out->mask_off}};
  const size_t n_ops = in.has_mask ? 4 : 3;
  for (size_t o = 0; o < n_ops; ++o) {
    // stride[a]: elements between consecutive indices of leading axis a (from the right) of this operand.
    std::vector<size_t> stride(lead_rank + 1, 0);
    size_t step = ops[o].matrix;
    for (size_t a = 1; a <= lead_rank; ++a) {
      const int64_t dim = dim_from_end(*ops[o].shape, a + 2);
      stride[a] = dim == 1 && out_lead[lead_rank - a] != 1 ? 0 : step;
      if (a + 2 <= ops[o].shape->size()) step *= static_cast<size_t>(dim);
    }
    for (size_t h = 0; h < heads; ++h) {
      size_t rest = h, off = 0;
      for (size_t a = 1; a <= lead_rank; ++a) {
        const size_t out_dim = static_cast<size_t>(out_lead[lead_rank - a]);
        size_t index = rest % out_dim;
        rest /= out_dim;
        const int64_t dim = dim_from_end(*ops[o].shape, a + 2);
        if (a == 1 && dim != 1) index /= out_dim / static_cast<size_t>(dim);  // GQA: h / (H / H_kv)
        off += index * stride[a];
      }
      (*ops[o].off)[h] = off;
    }
  }
  return "";
}

bool fold_decode_groups(AttentionLayout* l) {
  const size_t heads = l->q_off.size();
  if (l->sq != 1 || heads < 2) return false;
  size_t g = 1;
  while (g < heads && l->k_off[g] == l->k_off[0] && l->v_off[g] == l->v_off[0]) ++g;
  if (g < 2 || heads % g != 0) return false;
  const bool masked = !l->mask_off.empty() && heads == l->mask_off.size();
  const size_t mask_step = masked ? l->mask_off[1] - l->mask_off[0] : 0;
  for (size_t h0 = 0; h0 < heads; h0 += g) {
    for (size_t r = 1; r < g; ++r) {
      const size_t h = h0 + r;
      if (l->k_off[h] != l->k_off[h0] || l->v_off[h] != l->v_off[h0] || l->q_off[h] != l->q_off[h0] + r * l->d) {
        return false;
      }
      if (masked && l->mask_off[h] != l->mask_off[h0] + r * mask_step) return false;
    }
  }
  for (auto* off : {&l->q_off, &l->k_off, &l->v_off, &l->mask_off}) {
    if (off->empty()) continue;
    for (size_t v = 0; v < heads / g; ++v) (*off)[v] = (*off)[v * g];
    off->resize(heads / g);
  }
  l->sq = g;
  l->mask_row_stride = mask_step;
  return true;
}

// ---------------------------------------------------------------------------
// Tiles. Every key tile re-packs its K and V rows for the GEMMs, so the more
// query rows share a tile the less packing per flop: bq is the largest power
// of two up to 128 whose Q rows (with Eigen's packed copy) and output rows,
// bq (2 d + dv) floats, take at most a quarter of L2, where they stay for the
// whole key loop. bk fills the rest of half of L2 with one step's data: the
// score tile and its packed copy (2 bq bk) and the K and V tiles with theirs
// (2 bk (d + dv)); the other half holds the next tile's operands as they
// arrive. Multiples of 16 keep the GEMM micro-kernels' panels full. L1 is
// left to the GEMM, which blocks for it itself.
AttentionTiles choose_attention_tiles(const CacheSizes& caches, size_t sq, size_t skv, size_t d, size_t dv) {
  const size_t width = std::max<size_t>(1, d + dv), l2_floats = caches.l2 / sizeof(float);
  size_t bq = std::clamp<size_t>(floor_pow2(l2_floats / 4 / std::max<size_t>(1, 2 * d + dv)), 16, 128);
  bq = std::max<size_t>(1, std::min(bq, sq));  // decode: one row leaves L2 to the keys
  const size_t resident = bq * (2 * d + dv);
  size_t bk = l2_floats / 2 > resident ? (l2_floats / 2 - resident) / (2 * bq + 2 * width) : 0;
  bk = std::clamp<size_t>(bk / 16 * 16, 16, 1024);
  bk = std::max<size_t>(1, std::min(bk, skv));
  return {bq, bk};
}

size_t attention_scratch_floats(const AttentionParams& p) {
  const size_t bq = p.tiles.bq, bk = p.tiles.bk;
  size_t n = bq * bk + bq * p.dv + 3 * bq;
  if (p.half || p.mask_col_broadcast) n += bq * bk;
  if (p.half) n += bq * p.d + bk * p.d + bk * p.dv;
  // Packed key tiles (attention_flash.h): the task's Q rows and each tile's P
  // as GEMM operands, each 64-byte aligned within the scratch.
  if (p.packed) n += (bq * p.d + 15) / 16 * 16 + (bq * bk + 15) / 16 * 16 + 16;
  if (p.bf16) {
    // Words of bf16 pairs: Q rows, K^T panel, P rows, V panel (rows and pairs
    // rounded up to even for the BFMMLA layout), 16 K rows being transposed
    // (attention_bf16_avx512.h, bf16_pack_cols_words).
    const size_t d_words = bf16_scratch_words(p.d), k_words = bf16_scratch_words(bk), rows = bf16_scratch_rows(bq);
    const size_t d_pairs = (p.d + 1) / 2;
    n += rows * d_words + d_words * bf16_scratch_panel(bk) + rows * k_words + k_words * bf16_scratch_panel(p.dv) +
         16 * ((d_pairs + 15) / 16 * 16);
  }
  return n;
}

// ---------------------------------------------------------------------------
// Tasks.

void plan_attention_tasks(const AttentionParams& p, size_t heads, size_t parallelism, AttentionTaskPlan* plan) {
  const size_t bq = p.tiles.bq, bk = p.tiles.bk;
  const size_t q_blocks = (p.sq + bq - 1) / bq;
  plan->tasks.clear();
  plan->partials.clear();
  plan->blocks = heads * q_blocks;
  plan->chunks = 1;
  if (plan->blocks == 0) return;

  const size_t key_tiles = (p.skv + bk - 1) / bk;
  size_t tiles_per_chunk = key_tiles;
  if (plan->blocks < parallelism && key_tiles > 1) {
    const size_t want = (parallelism + plan->blocks - 1) / plan->blocks;
    tiles_per_chunk = (key_tiles + std::min(want, key_tiles) - 1) / std::min(want, key_tiles);
    plan->chunks = (key_tiles + tiles_per_chunk - 1) / tiles_per_chunk;
  }

  if (plan->chunks == 1) {
    // Heaviest first: under a causal mask the last query blocks see the most keys.
    for (size_t b = q_blocks; b-- > 0;) {
      for (size_t h = 0; h < heads; ++h) {
        plan->tasks.push_back({h, b * bq, std::min(p.sq, (b + 1) * bq), 0, p.skv, nullptr});
      }
    }
    return;
  }
  const size_t chunk_keys = tiles_per_chunk * bk;
  const size_t row_floats = p.dv + 2;
  plan->partials.assign(plan->blocks * plan->chunks * bq * row_floats, 0.0f);
  for (size_t h = 0; h < heads; ++h) {
    for (size_t b = 0; b < q_blocks; ++b) {
      for (size_t c = 0; c < plan->chunks; ++c) {
        float* partial = plan->partials.data() + plan->tasks.size() * bq * row_floats;
        plan->tasks.push_back(
            {h, b * bq, std::min(p.sq, (b + 1) * bq), c * chunk_keys, std::min(p.skv, (c + 1) * chunk_keys), partial});
      }
    }
  }
}

bool plan_attention_packing(AttentionParams* p, const AttentionHead* heads, size_t n, AttentionPacking* pk) {
  *pk = AttentionPacking{};
  p->packed = false;
  const size_t bq = p->tiles.bq, bk = p->tiles.bk;
  if (p->bf16 || p->skv == 0 || p->sq <= bq || n == 0) return false;
  pk->tiles = (p->skv + bk - 1) / bk;
  pk->source_floats = pk->tiles * (attention_packed_tile(*p, p->d) + attention_packed_tile(*p, p->dv));
  pk->of_head.resize(n);
  std::map<std::pair<const void*, const void*>, size_t> seen;
  for (size_t h = 0; h < n; ++h) {
    const auto found = seen.emplace(std::make_pair(heads[h].k, heads[h].v), pk->sources.size());
    if (found.second) pk->sources.push_back(h);
    pk->of_head[h] = found.first->second;
  }
  // Tile reads of one head: a causal query block reads the tiles up to its
  // last row's limit. Every head's reads fall on its source's tiles.
  size_t reads = 0;
  for (size_t q0 = 0; q0 < p->sq; q0 += bq) {
    const size_t q1 = std::min(p->sq, q0 + bq);
    const size_t keys = p->causal ? std::min(p->skv, q1 + p->skv > p->sq ? q1 + p->skv - p->sq : 0) : p->skv;
    reads += (keys + bk - 1) / bk;
  }
  if (n * reads < kAttentionPackMinReads * pk->sources.size() * pk->tiles ||
      pk->floats() * sizeof(float) > kAttentionPackMaxBytes) {
    *pk = AttentionPacking{};
    return false;
  }
  p->packed = true;
  return true;
}

void attention_packing_assign(const AttentionParams& p, const AttentionPacking& pk, float* base, AttentionHead* heads,
                              size_t n) {
  for (size_t h = 0; h < n; ++h) {
    heads[h].packed_k = base + pk.of_head[h] * pk.source_floats;
    heads[h].packed_v = heads[h].packed_k + pk.tiles * attention_packed_tile(p, p.d);
  }
}

void combine_attention_partials(const AttentionParams& p, const AttentionHead* heads, const AttentionTaskPlan& plan,
                                size_t block) {
  const AttentionTask& first = plan.tasks[block * plan.chunks];
  const size_t rows = first.q1 - first.q0, dv = p.dv, row_floats = dv + 2;
  std::vector<float> y(dv);
  for (size_t r = 0; r < rows; ++r) {
    float m_max = -kInf;
    bool nan = false;
    for (size_t c = 0; c < plan.chunks; ++c) {
      const float m = plan.tasks[block * plan.chunks + c].partial[r * row_floats];
      nan |= std::isnan(m);
      m_max = std::max(m_max, m);
    }
    if (nan) {
      std::fill(y.begin(), y.end(), std::numeric_limits<float>::quiet_NaN());
    } else if (m_max == -kInf) {  // no live key in any chunk
      std::fill(y.begin(), y.end(), 0.0f);
    } else {
      std::fill(y.begin(), y.end(), 0.0f);
      double l = 0.0;
      for (size_t c = 0; c < plan.chunks; ++c) {
        const float* part = plan.tasks[block * plan.chunks + c].partial + r * row_floats;
        if (part[0] == -kInf) continue;  // this chunk saw no live key
        const float w = std::exp(part[0] - m_max);
        l += static_cast<double>(w) * part[1];
        for (size_t j = 0; j < dv; ++j) y[j] += w * part[2 + j];
      }
      const float inv = static_cast<float>(1.0 / l);
      for (float& v : y) v *= inv;
    }
    const size_t at = (first.q0 + r) * dv;
    if (p.half) {
      p.f32_to_f16(y.data(), static_cast<uint16_t*>(heads[first.head].out) + at, dv);
    } else {
      std::memcpy(static_cast<float*>(heads[first.head].out) + at, y.data(), dv * sizeof(float));
    }
  }
}

}  // namespace quake
