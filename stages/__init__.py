"""The pipeline's stages, one module each: teacher, distill, prune, export, quantize, benchmark."""
