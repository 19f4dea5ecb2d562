// cufm._cufm: the public C++ API (include/cufm/) for Python, through nanobind. One file per
// concept binds its part (bind.hpp lists them); this one makes the module, its exception and the
// build's facts. The GIL is released while training, sampling and evaluating; a fit's progress
// callback takes it back.
#include "bind.hpp"

NB_MODULE(_cufm, m) {
  namespace py = cufm::python;
  m.doc() = "cuFM: flow-matching training and sampling on the GPU or the CPU (the C++ API's bindings)";
  nb::exception<cufm::Error>(m, "Error", PyExc_ValueError);

  m.def("version", &cufm::version, "cuFM's version.");
  m.def("build_summary", &cufm::build_summary, "The build's backends and options.");
  m.def("cuda_built", &cufm::cuda_built, "True when this build has the CUDA backend.");
  m.def("cpu_bf16_unavailable_reason", &cufm::cpu_bf16_unavailable_reason,
        "Empty when precision='bf16' runs on the CPU backend here, else why not.");
  m.def("cpu_thread_wait_policy", &cufm::cpu_thread_wait_policy,
        "How the CPU backend's threads wait, as the environment set it (e.g. 'GOMP_SPINCOUNT=1000').");

  py::bind_configs(m);
  py::bind_training(m);
  py::bind_sampling(m);
  py::bind_likelihood(m);
  py::bind_loss(m);
  py::bind_kernels(m);
}
