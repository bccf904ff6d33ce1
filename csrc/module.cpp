// The Python extension module samdetr_ops._C. Importing it runs the static TORCH_LIBRARY registrations of every
// op in this library; it exports no Python functions of its own (the ops are reached through torch.ops).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(samdetr_ops, m) {}

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "samdetr_ops compiled kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
