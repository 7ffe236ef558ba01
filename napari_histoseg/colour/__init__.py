"""H&E colour: optical density, colour deconvolution, haematoxylin (one definition), stain
normalisation, CLAHE and the preprocessing a model was trained with."""
