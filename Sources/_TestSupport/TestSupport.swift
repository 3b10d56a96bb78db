import Tensor
import Communication
import HDF5
