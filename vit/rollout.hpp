// Attention rollout (Abnar & Zuidema 2020; the ViT paper, appendix D.8): how much of each patch
// reaches a token through every block's attention and its residual connection. Per block the
// heads' probabilities [N, N] are fused (mean, max or min over the heads), the lowest
// discard_ratio of the fused weights dropped, the identity added for the residual and each ROW
// renormalised to sum 1 (a token's output mixes its inputs: rows are the queries); the blocks'
// matrices are multiplied in order, the last on the left. The map is the cls token's row over
// the patches, or, for a model without a cls token (avg pooling), the mean of the patch rows.
#pragma once

#include <string>
#include <vector>

#include "vit/module.hpp"

namespace vit {

struct RolloutOptions {
  std::string head_fusion = "mean";  // mean, max or min over the heads
  double discard_ratio = 0.0;        // in [0, 1): the share of each block's weights set to 0
};

// probs: every block's attention probabilities [B, H, N, N], first block first; P prefix tokens
// before the patches, the first of them the cls token when `class_token`. Returns [B, N − P],
// row-major over the patch grid; each row sums to the share of the mass that reaches patches.
Tensor attention_rollout(Context& ctx, const std::vector<const Tensor*>& probs, int64_t prefix,
                         bool class_token, const RolloutOptions& options);

}  // namespace vit
