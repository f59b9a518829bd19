# The citadel controller image. It copies a binary built on the host, because this machine has no
# container registry (nothing can be pulled) and so no Rust image to build it in:
#
#   cargo build --release          # target/release/citadel
#   scripts/images.sh              # the base image: the libraries that binary links, by docker import
#   docker build --build-arg BASE_IMAGE=citadel-local/base:1 -t citadel-local/citadel:dev .
#
# docker-compose.etcd.yml builds it the same way (CITADEL_BASE_IMAGE, CITADEL_IMAGE).
ARG BASE_IMAGE=citadel-local/base:1
FROM ${BASE_IMAGE}

COPY target/release/citadel /usr/local/bin/citadel

# SIGTERM (docker stop, docker-compose stop): the controller resigns its leadership, revokes its
# lease and exits, so another replica takes over at once.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/citadel"]
CMD ["controller"]
