// Stand-in for the CUDA toolkit's <cuda_fp16.h> in the host emulation build (native/tests/cuda_emu): the emulation's
// types and device functions (cuda_emu.h). This folder is on the include path of the emulation checks only.
#pragma once
#include "cuda_emu.h"
