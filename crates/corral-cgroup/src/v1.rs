//! The legacy (v1) layout: one hierarchy per controller. (Being written.)
