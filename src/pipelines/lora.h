// LoRA files at inference, as diffusers' load_lora_weights applies them to a pipeline's UNet:
//   - the file lisadiff writes (peft names, "unet.<module>.lora_A.weight" / ".lora_B.weight")
//     and the one the diffusers training scripts write ("unet.<module>.lora.down.weight" /
//     ".lora.up.weight", convert_state_dict_to_diffusers) are both read;
//   - the rank comes from the tensors, alpha = rank (no alpha tensors in either format), and
//     `scale` multiplies the update as cross_attention_kwargs={"scale": s} does:
//     W x + scale * B A x;
//   - adapters go on exactly the layers the file names: attention projections, and for an
//     LCM-LoRA also proj_in/proj_out, the feed-forward layers, the resnets' convolutions and
//     time projections and the samplers' convolutions (models::adaptable_layers).
// Refused with the file and the key: keys of another component (text_encoder.*), keys that
// name no adaptable layer of the UNet, missing halves, mixed ranks, shapes that do not fit
// the layer.
#pragma once

#include <filesystem>

#include "pipelines/components.h"

namespace lisadiff::pipelines {

// Attaches the file's adapters to c.unet (kept in c.lora until the components go away).
// Throws lisadiff::Error (nothing attached) for the problems above, or when c has a LoRA.
void apply_lora(Components& c, const std::filesystem::path& file, double scale = 1.0);

}  // namespace lisadiff::pipelines
