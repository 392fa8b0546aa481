"""Media: frames, sources (URI -> source) and codecs (HEVC, JPEG, JPEG 2000) as the pipeline and evaluation use them."""
