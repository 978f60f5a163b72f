"""The MMDetection stack: Mask R-CNN through mmengine's Runner, on COCO instances made from the masks."""
