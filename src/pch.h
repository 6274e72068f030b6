// Precompiled header: LibTorch and JSON dominate compile time.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>
