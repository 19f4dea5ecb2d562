// Checkpoints in the safetensors format: readable by Python's safetensors and PyTorch.
//
// Tensors: "layers.<l>.weight" [out, in] and "layers.<l>.bias" [out] (nn.Linear's layout);
// "adam_m.<name>", "adam_v.<name>" and, with EMA, "ema.<name>". Metadata: the model and training
// configuration as JSON, the step, and the format version. Written to a temporary file in the
// same folder and renamed, so an existing checkpoint is replaced whole or not at all.
#pragma once

#include <string>

#include "cufm/model.hpp"
#include "cufm/trainer.hpp"

namespace cufm {

// Which weights a model is built from: the trained ones, or their exponential moving average.
enum class Weights : int { Trained = 0, Ema = 1 };

struct Checkpoint {
  MlpConfig model;
  TrainConfig train;
  TrainState state;
  std::string dataset;  // the training data's name or path, for information

  Model to_model(Weights which = Weights::Trained) const;
};

void save_checkpoint(const std::string& path, const Checkpoint& ckpt);
// Throws cufm::Error naming the file and the problem (missing, truncated, corrupt, inconsistent).
Checkpoint load_checkpoint(const std::string& path);

// Serialisation of the configurations, as stored in the metadata.
std::string to_json(const MlpConfig& c);
std::string to_json(const TrainConfig& c);
MlpConfig mlp_config_from_json(const std::string& s);
TrainConfig train_config_from_json(const std::string& s);

}  // namespace cufm
