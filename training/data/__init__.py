"""Data sets: CIFAR/SVHN/image folders, MusicNet layout, corpus renderer."""
