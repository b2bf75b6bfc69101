"""Our Keras layers, one per file, each registered serialisable (package `convpipe`).

Add an import line here when adding a layer file.
"""
from models.layers.select_frame import SelectFrame  # noqa: F401
from models.layers.bed_of_nails import BedOfNails2D  # noqa: F401
from models.layers.max_pooling_with_argmax import MaxPoolingWithArgmax2D  # noqa: F401
from models.layers.max_unpooling import MaxUnpooling2D  # noqa: F401
from models.layers.nearest_upsampling import NearestUpsampling2D  # noqa: F401
from models.layers.sum_pooling import SumPooling2D  # noqa: F401
from models.layers.fused_batch_normalization import FusedBatchNormalization  # noqa: F401
