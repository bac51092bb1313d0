"""The array and its sky: the vocabulary every part of SiTian Brain shares."""
