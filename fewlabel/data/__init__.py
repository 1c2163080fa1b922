"""Getting the data: VOC download and parsing, stratified subsets, image paths."""
