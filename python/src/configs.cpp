// The configurations: MlpConfig (the velocity model) and TrainConfig (the training recipe). Their
// keyword defaults are read from default-constructed C++ structs, and their enum fields' names and
// docstrings from the enum tables (cufm/names.hpp), so that a default or a name changed in C++
// changes here too.
#include "bind.hpp"

namespace cufm::python {

namespace {

void bind_mlp_config(nb::module_& m) {
  const cufm::MlpConfig d;
  nb::class_<cufm::MlpConfig>(m, "MlpConfig",
                              "The velocity model: an MLP over [x_t, time features, context, one-hot].")
      .def(
          "__init__",
          [](cufm::MlpConfig* c, int data_dim, std::vector<int> hidden, const std::string& activation,
             int time_features, int num_classes, int context_dim) {
            new (c) cufm::MlpConfig();
            c->data_dim = data_dim;
            c->hidden = std::move(hidden);
            c->activation = cufm::parse_activation(activation);
            c->time_features = time_features;
            c->num_classes = num_classes;
            c->context_dim = context_dim;
            c->validate();
          },
          "data_dim"_a = d.data_dim, "hidden"_a = d.hidden, "activation"_a = cufm::to_string(d.activation),
          "time_features"_a = d.time_features, "num_classes"_a = d.num_classes,
          "context_dim"_a = d.context_dim,
          doc("The C++ defaults; activation " + cufm::enum_help<cufm::Activation>() +
              ". Raises cufm.Error naming a bad field."))
      .def_rw("data_dim", &cufm::MlpConfig::data_dim, "D, the dimension of a data point.")
      .def_rw("hidden", &cufm::MlpConfig::hidden, "The hidden layers' widths.")
      .def_prop_rw(
          "activation", [](const cufm::MlpConfig& c) { return std::string(cufm::to_string(c.activation)); },
          [](cufm::MlpConfig& c, const std::string& a) { c.activation = cufm::parse_activation(a); },
          doc("The hidden layers' activation: " + cufm::enum_choices<cufm::Activation>() + "."))
      .def_rw("time_features", &cufm::MlpConfig::time_features, "0: raw t; K > 0 (even): K sinusoids of t.")
      .def_rw("num_classes", &cufm::MlpConfig::num_classes,
              "0: unconditional; else the classes (plus a null one).")
      .def_rw("context_dim", &cufm::MlpConfig::context_dim,
              "K > 0: conditioned on a context vector of K floats (the input gets K values and a null "
              "indicator).")
      .def("input_dim", &cufm::MlpConfig::input_dim,
           "The first layer's width: D + time features + (context_dim + 1 with a context) + (num_classes + 1 "
           "when conditional).")
      .def(
          "__eq__", [](const cufm::MlpConfig& a, const cufm::MlpConfig& b) { return a == b; },
          "Equal in every field.")
      .def("__repr__", [](const cufm::MlpConfig& c) { return "MlpConfig(" + cufm::to_json(c) + ")"; });
}

void bind_train_config(nb::module_& m) {
  const cufm::TrainConfig d;
  nb::class_<cufm::TrainConfig>(m, "TrainConfig", "The training recipe (what a checkpoint records).")
      .def(
          "__init__",
          [](cufm::TrainConfig* c, int batch_size, uint64_t seed, float lr, const std::string& optimizer,
             float weight_decay, float grad_clip, float ema_decay, float label_dropout, float sigma_min,
             const std::string& time_sampling, float logit_mean, float logit_std,
             const std::string& lr_schedule, uint64_t warmup_steps, uint64_t decay_steps, float min_lr,
             float context_dropout, const std::string& coupling, float ot_reg) {
            new (c) cufm::TrainConfig();
            c->batch_size = batch_size;
            c->seed = seed;
            c->optim.kind = cufm::parse_optimizer(optimizer);
            c->optim.lr = lr;
            c->optim.weight_decay = weight_decay;
            c->optim.grad_clip = grad_clip;
            c->optim.ema_decay = ema_decay;
            c->optim.lr_schedule = cufm::parse_lr_schedule(lr_schedule);
            c->optim.warmup_steps = warmup_steps;
            c->optim.decay_steps = decay_steps;
            c->optim.min_lr = min_lr;
            c->path.sigma_min = sigma_min;
            c->path.time_sampling = cufm::parse_time_sampling(time_sampling);
            c->path.logit_mean = logit_mean;
            c->path.logit_std = logit_std;
            c->label_dropout = label_dropout;
            c->context_dropout = context_dropout;
            c->coupling = cufm::parse_coupling(coupling);
            c->ot_reg = ot_reg;
            c->validate();
          },
          "batch_size"_a = d.batch_size, "seed"_a = d.seed, "lr"_a = d.optim.lr,
          "optimizer"_a = cufm::to_string(d.optim.kind), "weight_decay"_a = d.optim.weight_decay,
          "grad_clip"_a = d.optim.grad_clip, "ema_decay"_a = d.optim.ema_decay,
          "label_dropout"_a = d.label_dropout, "sigma_min"_a = d.path.sigma_min,
          "time_sampling"_a = cufm::to_string(d.path.time_sampling), "logit_mean"_a = d.path.logit_mean,
          "logit_std"_a = d.path.logit_std, "lr_schedule"_a = cufm::to_string(d.optim.lr_schedule),
          "warmup_steps"_a = d.optim.warmup_steps, "decay_steps"_a = d.optim.decay_steps,
          "min_lr"_a = d.optim.min_lr, "context_dropout"_a = d.context_dropout,
          "coupling"_a = cufm::to_string(d.coupling), "ot_reg"_a = d.ot_reg,
          doc("The C++ defaults. optimizer " + cufm::enum_help<cufm::Optimizer>() + "; time_sampling " +
              cufm::enum_help<cufm::TimeSampling>() + "; coupling " + cufm::enum_help<cufm::Coupling>() +
              ", sinkhorn's regularisation being ot_reg; lr_schedule " + cufm::enum_help<cufm::LrSchedule>() +
              ", after a warm-up over warmup_steps. Raises cufm.Error naming a bad field."))
      .def_rw("batch_size", &cufm::TrainConfig::batch_size, "Rows per training step.")
      .def_rw("seed", &cufm::TrainConfig::seed, "The Philox key of every draw of the run.")
      .def_rw("label_dropout", &cufm::TrainConfig::label_dropout,
              "Per-row probability of the null class (conditional models).")
      .def_rw("context_dropout", &cufm::TrainConfig::context_dropout,
              "Per-row probability of the null context (models with a context; > 0 for guidance).")
      .def_prop_rw(
          "coupling", [](const cufm::TrainConfig& c) { return std::string(cufm::to_string(c.coupling)); },
          [](cufm::TrainConfig& c, const std::string& s) { c.coupling = cufm::parse_coupling(s); },
          doc("The noise-data pairing: " + cufm::enum_choices<cufm::Coupling>() + "."))
      .def_rw("ot_reg", &cufm::TrainConfig::ot_reg,
              "Sinkhorn's regularisation, relative to the mean pair cost.")
      .def("__repr__", [](const cufm::TrainConfig& c) { return "TrainConfig(" + cufm::to_json(c) + ")"; });
}

}  // namespace

void bind_configs(nb::module_& m) {
  bind_mlp_config(m);
  bind_train_config(m);
}

}  // namespace cufm::python
