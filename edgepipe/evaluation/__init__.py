"""Offline evaluation (`edgepipe eval`): accuracy-vs-bpp curves and BD-Rate(accuracy) tables that
reproduce Suzuki et al., ICIP 2019. bdrate: the BD metrics; points: operating points; tvl1: the
TV-L1 baseline; runner: the cached, parallel computation; report: CSV, markdown and plot."""
