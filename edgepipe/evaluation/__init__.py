"""Offline evaluation (`edgepipe eval`): accuracy-vs-bpp curves and BD-Rate(accuracy) tables that
reproduce Suzuki et al., ICIP 2019. points: operating points; runner: the cached,
parallel computation; report: CSV, markdown and plot; preview: one picture of one image. Pre-transforms
(TV-L1 included) come from edgepipe.engines, codecs from edgepipe.media.codecs, the BD metrics from
edgepipe.core.bdrate (shared with the monitor's live BD-rate)."""
