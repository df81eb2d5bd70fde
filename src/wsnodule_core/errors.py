"""Exceptions and warnings raised by wsnodule.

Every error says what is wrong and what to do about it. They all derive from
:class:`WsnoduleError`, so a caller (the CLI, the napari plugin) can catch one
type and show the message as it is.
"""

from __future__ import annotations


class WsnoduleError(Exception):
    """Base class of every error raised on purpose by wsnodule."""


# --- reading volumes -------------------------------------------------------


class VolumeReadError(WsnoduleError):
    """A volume could not be read."""


class InputPathNotFoundError(VolumeReadError, FileNotFoundError):
    """The path given does not exist."""


class EmptyFolderError(VolumeReadError):
    """A folder was given but it holds no files."""


class NoDicomFilesError(VolumeReadError):
    """A folder was given but none of its files is DICOM."""


class CorruptDicomError(VolumeReadError):
    """A DICOM file is truncated or cannot be decoded."""


class MultipleSeriesError(VolumeReadError):
    """A DICOM folder holds several series and none was chosen."""


class MissingSlicesError(VolumeReadError):
    """The slices of a DICOM series are not evenly spaced: some are missing."""


class MixedOrientationError(VolumeReadError):
    """The slices of a DICOM series do not share one orientation."""


class UnsupportedFormatError(VolumeReadError):
    """The file's extension is not a format wsnodule reads or writes."""


class InconsistentSeriesError(VolumeReadError):
    """The slices of a DICOM series cannot form one regular 3D grid (sizes differ, duplicate
    positions, gantry tilt, missing position/orientation tags)."""


class SeriesNotFoundError(VolumeReadError):
    """The DICOM series asked for (by SeriesInstanceUID) is not in the folder."""


class TruncatedImageError(VolumeReadError):
    """A volume file holds fewer bytes of voxel data than its header promises (cut short)."""


class DamagedImageError(VolumeReadError):
    """A volume file is not what its name says (a .nii.gz that is neither gzip nor NIfTI, bad gzip data)."""


# --- invalid volumes -------------------------------------------------------


class InvalidVolumeError(WsnoduleError, ValueError):
    """A volume's array or geometry is not usable."""


class DimensionError(InvalidVolumeError):
    """The image is not 3D (a 2D image, or a 4D/multi-channel volume)."""


class InvalidSpacingError(InvalidVolumeError):
    """A voxel spacing is zero, negative or not finite."""


class NonFiniteValuesError(InvalidVolumeError):
    """The voxel values contain NaN or infinity."""


class GeometryMismatchError(InvalidVolumeError):
    """A mask does not have the shape or geometry of its reference volume."""


class UnsuitableVolumeError(InvalidVolumeError):
    """A valid volume a method cannot segment (e.g. a single 2D slice)."""


class MetricInputError(WsnoduleError, ValueError):
    """Masks, labels or parameters given to a metric are inconsistent (shapes, bins, labels)."""


# --- writing ---------------------------------------------------------------


class OutputExistsError(WsnoduleError, FileExistsError):
    """Writing would overwrite an existing file; pass overwrite=True to allow it."""


class UnwritableOutputError(WsnoduleError, PermissionError):
    """An output folder cannot be created or written to (permissions, read-only disk, a file in the way)."""


class OutputIsInputError(WsnoduleError, ValueError):
    """An output path is an input file (or lies inside the input DICOM series folder)."""


class NotDicomReferenceError(WsnoduleError, ValueError):
    """A DICOM output (DICOM-SEG) needs a reference volume read from DICOM files."""


# --- lung segmentation -----------------------------------------------------


class LungSegmentationError(WsnoduleError, ValueError):
    """No lung was found in a volume, or a lung mask / crop was asked for with invalid parameters."""


# --- optional data ---------------------------------------------------------


class DataNotAvailableError(WsnoduleError):
    """Data that this call needs (LIDC images, WSNODULE_DATA, ...) is not configured."""


class DataLookupError(WsnoduleError, LookupError):
    """A patient, series or annotation asked for is not in the data set (e.g. LIDC-IDRI)."""


class AnnotationFileError(WsnoduleError, ValueError):
    """An annotation file (e.g. LUNA16's annotations.csv) is missing columns or has bad values."""


class BoxFileError(AnnotationFileError):
    """A box annotation file (a PASCAL-VOC XML of Lung-PET-CT-Dx, a world-box JSON) is malformed or its
    box does not fit the slice it names."""


class UnknownSliceError(DataLookupError):
    """An annotation names a DICOM slice (SOPInstanceUID) that no series of its patient holds."""


class PhantomParameterError(WsnoduleError, ValueError):
    """A parameter of the procedural chest CT phantom is out of range or unknown."""


class InvalidDatasetError(WsnoduleError, ValueError):
    """A data-set folder or its dataset.json is missing, of another version, or incomplete."""


class LidcParameterError(WsnoduleError, ValueError):
    """A parameter of the LIDC-IDRI adapters (reader merge, slice labels, shape sampling) is out of range."""


class PatchParameterError(WsnoduleError, ValueError):
    """A patch size or spacing given to the LUNA16 patch extraction is missing, doubled or not positive."""


class InsertionParameterError(WsnoduleError, ValueError):
    """A nodule-insertion parameter is unknown or inconsistent (placement, on_failure, a shape too small)."""


# --- data sets and their builders ---------------------------------------------


class DatasetBuildError(WsnoduleError, ValueError):
    """A data-set builder got unusable parameters or inputs (unknown source or size, empty range, no CT)."""


class UnknownSplitError(WsnoduleError, ValueError):
    """A data-set split was asked for by a name other than train, val or test."""


class EmptyVoiError(InvalidVolumeError):
    """A nodule VOI's mask holds no nodule voxel."""


class BuildCancelled(WsnoduleError):
    """A data-set build was cancelled through its ``cancel`` callback."""


# --- models and training ----------------------------------------------------


class FoundationModelError(WsnoduleError):
    """A pretrained model (LiteMedSAM) is not installed, or its checkpoint is not the one expected."""


class PromptError(WsnoduleError, ValueError):
    """A box or point prompt for a promptable model is malformed or lies outside the image."""


class ModelConfigError(WsnoduleError, ValueError):
    """A model or training configuration value is out of range or unknown."""


class CheckpointError(WsnoduleError):
    """A checkpoint file is missing, unreadable, of another kind, or does not fit the model."""


class TrainingDataError(WsnoduleError, ValueError):
    """The training data cannot train a classifier (no slices, only one class, ...)."""


class ShippedModelError(WsnoduleError):
    """A model shipped in the package cannot be used: its file is missing or altered, or it does not
    fit the checkpoint or options given with it."""


class UnknownShippedModelError(ShippedModelError, LookupError):
    """No shipped model has the name asked for."""


# --- NAM / R-NAM segmentation ------------------------------------------------


class NamSegmentationError(WsnoduleError, ValueError):
    """A NAM/R-NAM segmentation parameter or input is unusable (out of range, wrong shape)."""


class SegmentationCancelled(WsnoduleError):
    """A segmentation was cancelled by its ``cancel`` callback before it finished."""


def raise_if_cancelled(cancel, what: str = "the NAM segmentation") -> None:
    """Raise :class:`SegmentationCancelled` when the ``cancel`` callback (or None) says so: nothing
    partial is returned (a half-segmented volume would look like a finished one)."""
    if cancel is not None and cancel():
        raise SegmentationCancelled(
            f"{what} was cancelled before it finished; nothing was returned. Run it again to get a result."
        )


# --- PW4MedSeg ---------------------------------------------------------------


class SparseAnnotationError(WsnoduleError, ValueError):
    """A sparse annotation is malformed, outside its volume grid, or contradicts another one."""


class BoxOutsideGridError(SparseAnnotationError):
    """A world box lies entirely outside the volume grid it is to be put on."""


class LossInputError(TrainingDataError):
    """Logits, targets, confidence or ignore masks given to the loss do not fit together."""


# --- rectified-flow guidance ---------------------------------------------------


class SamplingCancelled(SegmentationCancelled):
    """An ODE integration was cancelled by its ``cancel`` callback before it finished."""


class FlowProtocolError(ModelConfigError):
    """The prior and the predictor were trained on different patches (size, spacing, HU window, range)."""


class PatchCentreError(GeometryMismatchError):
    """A patch centre cannot be used (outside the CT, or no point to take it from)."""


# --- warnings --------------------------------------------------------------


class WsnoduleWarning(UserWarning):
    """Base class of wsnodule's warnings."""


class NonCTModalityWarning(WsnoduleWarning):
    """The volume is not CT: its values are not taken to be Hounsfield units."""


class SpacingWarning(WsnoduleWarning):
    """A volume's voxel spacing is far from what the model was trained at (e.g. 10 mm slices)."""
