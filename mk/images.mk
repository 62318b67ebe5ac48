# The lab's container images, built without a registry or a container engine (xtask/src/images.rs): one OCI
# image-layout archive per image in $(IMAGES_DIR), which the lab imports into each node's containerd
# (ctr -n k8s.io images import) and serves from its registry mirror, and images.json listing them.
# Contents: Tabby's binaries (lab-binaries), the node software (node-software: pause, coredns, agnhost) and
# files of Debian packages installed here (deps/apt-packages.txt) with their shared libraries.
.PHONY: images

IMAGES_DIR ?= $(ROOT)/target/images
NODE_BIN   ?= $(CACHE)/node/bin

images: lab-binaries node-software ## Build the lab's container images (OCI archives + images.json) in target/images
	$(CARGO) xtask images --out $(IMAGES_DIR) --tabby-bin $(LAB_BIN) --node-bin $(NODE_BIN)
