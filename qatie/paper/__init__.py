"""The paper authors' released INT8 TFLite files: importing their weights (`tflite`) and diagnosing their full-HD failure layer by layer (`diagnosis`)."""
